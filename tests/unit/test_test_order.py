"""`make test` orders the tests for xdist's work stealing (tests/conftest.py: _longest_first): each
worker's contiguous slice starts with long tests and the expected time is shared out evenly, so the run
never ends with one worker in a long fault stream while the other idles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import conftest


class Item:
    def __init__(self, nodeid: str, marks: tuple[str, ...] = ()) -> None:
        self.nodeid, self.marks = nodeid, marks

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.marks else None


def test_each_worker_slice_starts_long_and_the_time_is_shared_evenly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = {"stream-a": 300.0, "stream-b": 200.0, "stream-c": 150.0, "stream-d": 100.0, "e2e-x": 20.0}
    (tmp_path / "durations.json").write_text(json.dumps({"sqlite": known}))
    monkeypatch.setattr(conftest, "_DURATIONS", tmp_path / "durations.json")
    items = [Item(f"unit-{i}") for i in range(20)]
    items += [Item(name, ("fault",)) for name in known if name.startswith("stream")]
    items += [Item("e2e-x", ("e2e",)), Item("e2e-unknown", ("e2e",)), Item("fault-unknown", ("fault",))]
    ordered = conftest._longest_first(items, 2)  # type: ignore[arg-type]

    assert sorted(i.nodeid for i in ordered) == sorted(i.nodeid for i in items)  # nothing lost
    half = len(ordered) // 2  # xdist's first slice: n // workers
    first, second = ordered[:half], ordered[half:]
    seconds = {i.nodeid: conftest._expected_seconds(known, i) for i in ordered}  # type: ignore[arg-type]
    # the two longest start the two slices; each slice runs longest first (steals take its short tail)
    assert {first[0].nodeid, second[0].nodeid} == {"stream-a", "stream-b"}
    for part in (first, second):
        times = [seconds[i.nodeid] for i in part]
        assert times == sorted(times, reverse=True)
    load = [sum(seconds[i.nodeid] for i in part) for part in (first, second)]
    assert abs(load[0] - load[1]) <= 60.0  # 880 s in all; the old order put every stream in one slice
    # one worker: simply longest first
    assert [i.nodeid for i in conftest._longest_first(items, 1)][:3] == ["stream-a", "stream-b", "stream-c"]  # type: ignore[arg-type]


def test_the_committed_durations_name_tests_that_exist() -> None:
    """tests/durations.json (refresh it from a run's --durations) names only tests in the tree."""
    durations = json.loads(conftest._DURATIONS.read_text())
    assert set(durations) == {"sqlite", "postgres"}
    root = Path(conftest.__file__).parents[1]
    for per_db in durations.values():
        for nodeid, seconds in per_db.items():
            path, name = nodeid.split("::", 1)
            assert (root / path).exists(), nodeid
            assert f"def {name.split('[', 1)[0]}(" in (root / path).read_text(), nodeid
            assert seconds > 0
