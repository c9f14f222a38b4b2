"""The ``store_free`` mark leaves a test out of the PostgreSQL run (tests/conftest.py), so the SQLite run
must catch a marked test that does open a service store through its settings or start services with
theirs: it would run differently on PostgreSQL, and the mark would hide that."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import ServiceSettings
from tests import conftest
from tests.support import dbmode


def test_a_store_opened_through_the_settings_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = conftest._watch_service_stores(monkeypatch)
    own = ServiceSettings(database_url="sqlite:///elsewhere.db", data_dir=str(tmp_path))
    assert own.sqlalchemy_url("planning")  # a database of the test's own: the same on both runs
    assert opened == []
    url = ServiceSettings(data_dir=str(tmp_path)).sqlalchemy_url("notify")
    assert url.endswith("notify.db")  # still the SQLite file: only watched
    dbmode.service_env(tmp_path / "data")
    assert opened == ["notify", "services under data"]


def test_the_postgresql_run_leaves_marked_tests_out(monkeypatch: pytest.MonkeyPatch) -> None:
    class Item:
        def __init__(self, name: str, marks: tuple[str, ...]) -> None:
            self.name, self.marks, self.nodeid = name, marks, f"tests/integration/x.py::{name}"

        def get_closest_marker(self, name: str) -> object | None:
            return name if name in self.marks else None

    class Hook:
        def __init__(self) -> None:
            self.deselected: list[Item] = []

        def pytest_deselected(self, items: list[Item]) -> None:
            self.deselected.extend(items)

    class Config:
        hook = Hook()

    items = [Item("free", ("store_free",)), Item("store", ()), Item("file", ("sqlite_only",))]
    for item in items:
        item.path = Path("tests/integration/x.py").resolve()  # type: ignore[attr-defined]
        item.add_marker = lambda _mark: None  # type: ignore[attr-defined]
    monkeypatch.setattr(dbmode, "ON_POSTGRES", True)
    conftest.pytest_collection_modifyitems(Config(), items)  # type: ignore[arg-type]
    assert [i.name for i in items] == ["store"]
    assert sorted(i.name for i in Config.hook.deselected) == ["file", "free"]
