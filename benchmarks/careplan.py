"""Benchmark: CarePlan build + validate (incl. required bindings) + serialise, per plan.

    .venv/bin/python -m benchmarks.careplan [--rounds 200]

Builds the CarePlan of a SIP case with 5 and with 50 interventions (needs, goals, meeting, follow-up,
CareTeam), validates it with fhir.resources (R4B models for R4, the default models for R5) and the
required-binding check, and serialises it to JSON — what planning does for every stored plan version.
Prints p50/p99 milliseconds per plan after a warm-up (the first validation of a model costs ~35 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.planning.fhir import care_plan
from tests.unit.planning.test_care_plan_fhir import NOW, full_case


def measure(n: int, version: str, rounds: int) -> tuple[list[float], int]:
    case = full_case("established", n=n)
    times, size = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        body = json.dumps(care_plan(case, version=3, at=NOW, fhir_version=version))  # type: ignore[arg-type]
        times.append((time.perf_counter() - t0) * 1000)
        size = len(body)
    return times, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    for version in ("4.0", "5.0"):
        measure(5, version, 5)  # warm-up
    print(f"CarePlan build + validate + serialise, {args.rounds} rounds each")
    print(f"{'FHIR':>5} {'interventions':>13} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'bytes':>7}")
    for version in ("4.0", "5.0"):
        for n in (5, 50):
            t, size = measure(n, version, args.rounds)
            t.sort()
            p99 = t[min(len(t) - 1, round(0.99 * (len(t) - 1)))]
            print(
                f"{version:>5} {n:>13} {statistics.median(t):8.2f} {p99:8.2f} {statistics.mean(t):8.2f} {size:>7}"
            )


if __name__ == "__main__":
    main()
