"""The retention rules that need no database (shared/retention.py): the audit cutoff is never later than
five calendar years ago, whatever the leap days; an audit retention below the law's is refused; a batch
is claimed with FOR UPDATE SKIP LOCKED on PostgreSQL only. (The pruning itself, on SQLite and
PostgreSQL: tests/integration/ops/test_retention.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from shared.persistence import inbox_table
from shared.retention import (
    AUDIT_MINIMUM_DAYS,
    MIN_BATCH,
    audit_cutoff,
    check_audit_days,
    inbox_kind,
    next_batch_size,
)


def test_the_audit_cutoff_keeps_five_calendar_years_even_with_two_leap_days():
    # 2024-02-28 .. 2029-02-28 holds 2024-02-29 and 2028-02-29: five years are 1827 days there
    now = datetime(2029, 2, 28, 12, 0, tzinfo=UTC)
    assert now - timedelta(days=AUDIT_MINIMUM_DAYS) > datetime(2024, 2, 28, 12, 0, tzinfo=UTC)
    assert audit_cutoff(now, AUDIT_MINIMUM_DAYS) == datetime(2024, 2, 28, 12, 0, tzinfo=UTC)
    # on 29 February, five years back is the 28th (that year has no 29th)
    leap = datetime(2028, 2, 29, 8, 0, tzinfo=UTC)
    assert audit_cutoff(leap, AUDIT_MINIMUM_DAYS) <= datetime(2023, 2, 28, 8, 0, tzinfo=UTC)
    # a longer retention than five years is kept as set
    assert audit_cutoff(now, 3650) == now - timedelta(days=3650)


@pytest.mark.parametrize("days", [1, 365, AUDIT_MINIMUM_DAYS - 1])
def test_an_audit_retention_shorter_than_five_years_is_refused(days):
    with pytest.raises(ValueError, match="HSLF-FS 2016:40"):
        check_audit_days(days)


@pytest.mark.parametrize("days", [0, AUDIT_MINIMUM_DAYS, 3650])
def test_five_years_or_more_or_for_ever_is_accepted(days):
    assert check_audit_days(days) == days


def test_a_batch_is_claimed_with_skip_locked_on_postgresql_only():
    kind = inbox_kind(inbox_table(sa.MetaData()), 30)
    cutoff = datetime(2026, 1, 1, tzinfo=UTC)
    pg = str(kind.statement("postgresql", cutoff, 500).compile(dialect=postgresql.dialect()))
    lite = str(kind.statement("sqlite", cutoff, 500).compile(dialect=sqlite.dialect()))
    assert "FOR UPDATE SKIP LOCKED" in pg and "LIMIT" in pg
    assert "FOR UPDATE" not in lite and "LIMIT" in lite


def test_a_slow_batch_makes_the_next_smaller_and_a_quick_one_bigger_within_bounds():
    # 500 rows in 0.2 s against a 0.02 s aim: a tenth as many next time
    assert next_batch_size(500, 0.2, 0.02, 500) == 50
    assert next_batch_size(50, 10.0, 0.02, 500) == MIN_BATCH  # never below the floor
    assert next_batch_size(20, 0.021, 0.02, 500) == 19  # a little too slow: still smaller
    assert next_batch_size(50, 0.015, 0.02, 500) == 50  # close to the aim: kept
    assert next_batch_size(50, 0.005, 0.02, 500) == 100  # quick: twice as big
    assert next_batch_size(400, 0.001, 0.02, 500) == 500  # never above the setting


async def test_the_pruner_shrinks_its_batches_while_they_hold_the_database_too_long(tmp_path):
    """A kind whose batches take 1 ms a row, aimed at 20 ms: the pass starts at 500 and goes on in
    batches of about 20, and still prunes every row."""
    import asyncio

    from shared.persistence import make_engine, sqlite_url
    from shared.retention import Kind, Pruner

    engine = make_engine(sqlite_url(tmp_path / "t.db"))
    meta = sa.MetaData()
    rows = sa.Table("rows", meta, sa.Column("id", sa.Integer, primary_key=True))
    async with engine.begin() as conn:
        await conn.run_sync(meta.create_all)
        await conn.execute(rows.insert(), [{"id": i} for i in range(2000)])

    async def apply(conn, keys):
        await asyncio.sleep(0.001 * len(keys))  # as slow as a big table's deletes
        await conn.execute(rows.delete().where(rows.c.id.in_([k.id for k in keys])))
        return len(keys)

    kind = Kind("rows", 1, candidates=lambda cutoff: sa.select(rows.c.id).order_by(rows.c.id), apply=apply)
    pruner = Pruner("test", engine, [kind], batch=500, pause=0.0, batch_seconds=0.02)
    try:
        assert await pruner.prune_once() == {"rows": 2000}
        smallest, largest = pruner.sizes["rows"]
        assert largest == 500 and MIN_BATCH <= smallest <= 25
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(rows)) == 0
    finally:
        await engine.dispose()
