"""The data-volume benchmark (benchmarks/volume.py) at a tiny scale on SQLite and PostgreSQL: every read
is measured on the empty and the one-year store, the storage per discharge is measured before and after
the retention pass, the pass prunes messages and never AuditEvents. The full run is in the README."""

from __future__ import annotations

import math

import pytest

from benchmarks import volume as bench

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(120)]
READS = {
    "overview of an organisation", "a case by id", "CarePlan search by patient", "a person's audit",
    "consent decision", "stays listing", "dead-letter listing",
}  # fmt: skip


def test_the_volume_benchmark_prints_every_read_storage_and_the_prune_on_both_databases(capsys):
    results = bench.main(["--db", "both", "--scale", "0.002", "--samples", "20"])
    out = capsys.readouterr().out
    assert [r.db for r in results] == ["sqlite", "postgres"]
    for r in results:
        assert r.discharges == 300
        assert set(r.reads) == READS
        for name, figures in r.reads.items():
            assert all(isinstance(f, float) and math.isfinite(f) and f > 0 for f in figures), (name, figures)
            assert name in out
        # the one-year store holds the year: 10 intake messages and 33 AuditEvents per discharge
        assert r.rows["planning"]["intake_messages"] == 3000 and r.rows["consent"]["audit_events"] == 9900
        for service in ("planning", "consent", "notify"):
            assert r.before[service] > 0 and r.after[service] > 0
        # a year later: the messages with complete effects go (the dead-lettered stay), AuditEvents never
        assert 0 < r.pruned["planning"]["intake_messages"] < 3000
        assert r.pruned["consent"]["audit_events"] == 0
        assert r.pruned["notify"]["notification_payload"] == 900
        assert r.after["planning"] < r.before["planning"]
        # the live path beside the prune: a hospital message to its ACK, a case, a consent decision
        assert set(r.live) == set(bench.PROBES) and r.live_rounds == 20
        for name, figures in r.live.items():
            assert all(math.isfinite(f) and f > 0 for f in figures), (name, figures)
            assert name in out
    assert out.count("p99 ratio") == 4 and out.count("storage per discharge") == 2
    assert out.count("live path (ms)") == 2
