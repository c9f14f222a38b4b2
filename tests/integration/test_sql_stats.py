"""Benchmark mode of the engine (issue 21): with SIP_SQL_STATS_DIR set, each engine counts its round
trips — statements, transactions, pool checkouts — where benchmarks.e2e --sql-stats reads them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.persistence import SQL_STATS_ENV, make_engine, sqlite_url

pytestmark = pytest.mark.store_free


async def test_an_engine_counts_its_statements_and_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SQL_STATS_ENV, str(tmp_path / "stats"))
    engine = make_engine(sqlite_url(tmp_path / "planning.db"))
    try:
        for _ in range(3):
            async with engine.begin() as conn:
                await conn.execute(sa.text("SELECT 1"))
                await conn.execute(sa.text("SELECT 2"))
        await asyncio.sleep(1.2)  # the counts are written every 0.5 s
        (written,) = (tmp_path / "stats").glob("planning.db-*.json")
        stats = json.loads(written.read_text())
        assert stats["database"] == "planning.db"
        assert stats["begin"] == 3 and stats["commit"] == 3 and stats["checkout"] == 3
        assert stats["by_text"]["SELECT 1"] == 3 and stats["by_text"]["SELECT 2"] == 3
        assert stats["statements"] >= 6  # and the connection's set-up PRAGMAs, if run as statements
    finally:
        await engine.dispose()


async def test_without_the_setting_nothing_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SQL_STATS_ENV, raising=False)
    engine = make_engine(sqlite_url(tmp_path / "planning.db"))
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("SELECT 1"))
        assert not await asyncio.to_thread(lambda: list(tmp_path.glob("**/*.json")))
    finally:
        await engine.dispose()
