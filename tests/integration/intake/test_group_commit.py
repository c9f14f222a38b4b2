"""Group commit of the intake (issue 21): messages waiting together share one transaction, each is
answered only after that commit, and one message's failure stays its own — SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.planning.intake import HospitalEvent, IntakeService, intake_tables
from shared.persistence import make_engine, sqlite_url
from tests.unit.intake.messages import adt_bytes, msa


@dataclass
class Store:
    engine: AsyncEngine
    table: sa.Table
    commits: list[int]

    async def control_ids(self) -> list[str]:
        async with self.engine.connect() as conn:
            t = self.table
            return list((await conn.scalars(sa.select(t.c.control_id).order_by(t.c.id))).all())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else sqlite_url(tmp_path / "p.db")
    engine = make_engine(url)
    md = sa.MetaData()
    table = intake_tables(md)
    async with engine.begin() as conn:
        await conn.run_sync(md.create_all)
    commits: list[int] = []
    event.listen(engine.sync_engine, "commit", lambda _conn: commits.append(1))
    try:
        yield Store(engine, table, commits)
    finally:
        await engine.dispose()


async def test_concurrent_messages_share_commits_and_are_each_answered_after_theirs(store: Store) -> None:
    committed_when_seen: list[int] = []

    async def on_event(conn: AsyncConnection, ev: HospitalEvent) -> None:
        assert conn.in_transaction()
        committed_when_seen.append(len(store.commits))

    service = IntakeService(store.engine, store.table, on_event=on_event)
    answers = await asyncio.gather(*(service.handle_hl7(adt_bytes(control_id=f"G-{i}")) for i in range(20)))
    assert [msa(a)[1:3] for a in answers] == [["AA", f"G-{i}"] for i in range(20)]
    assert sorted(await store.control_ids()) == sorted(f"G-{i}" for i in range(20))
    # 20 messages waiting together: one or two commits (a first that waited for nobody), not 20
    assert 1 <= len(store.commits) <= 2
    assert len(committed_when_seen) == 20
    # a message alone gets its own commit at once
    before = len(store.commits)
    assert msa(await service.handle_hl7(adt_bytes(control_id="G-alone")))[1] == "AA"
    assert len(store.commits) == before + 1


async def test_a_failing_message_in_a_group_fails_alone(store: Store) -> None:
    async def on_event(conn: AsyncConnection, ev: HospitalEvent) -> None:
        if ev.stay_id.endswith("BAD"):
            raise RuntimeError("its follow-up work cannot be stored")

    service = IntakeService(store.engine, store.table, on_event=on_event)
    good = [adt_bytes(control_id=f"OK-{i}", visit=f"V-{i}") for i in range(5)]
    bad = adt_bytes(control_id="NO-1", visit="V-BAD")
    results = await asyncio.gather(
        *(service.handle_hl7(raw) for raw in [*good[:3], bad, *good[3:]]), return_exceptions=True
    )
    assert isinstance(results[3], RuntimeError)  # no ACK: the sender resends
    assert [msa(r)[1] for i, r in enumerate(results) if i != 3] == ["AA"] * 5  # type: ignore[arg-type]
    assert sorted(await store.control_ids()) == [f"OK-{i}" for i in range(5)]


async def test_copies_of_one_message_in_a_group_take_effect_once(store: Store) -> None:
    seen: list[str] = []

    async def on_event(conn: AsyncConnection, ev: HospitalEvent) -> None:
        seen.append(ev.stay_id)

    service = IntakeService(store.engine, store.table, on_event=on_event)
    raw = adt_bytes(control_id="DUP-1")
    first, *copies = await asyncio.gather(*(service.handle_hl7(raw) for _ in range(4)))
    assert all(c == first for c in copies) and msa(first)[1] == "AA"
    assert await store.control_ids() == ["DUP-1"]
    assert len(seen) == 1


async def test_a_message_that_arrives_as_the_commit_starts_joins_it(store: Store) -> None:
    """The committer lets the event loop run once before it takes its group: a message received on
    another connection in that turn (its bytes read while the previous commit held the loop) shares
    the commit instead of waiting for one of its own."""
    service = IntakeService(store.engine, store.table)
    first = asyncio.create_task(service.handle_hl7(adt_bytes(control_id="T-1")))
    await asyncio.sleep(0)  # T-1 parsed and pending, the committer scheduled to run next
    second = asyncio.create_task(service.handle_hl7(adt_bytes(control_id="T-2")))  # arrives in its turn
    answers = await asyncio.gather(first, second)
    assert [msa(a)[1:3] for a in answers] == [["AA", "T-1"], ["AA", "T-2"]]
    assert len(store.commits) == 1
    assert await store.control_ids() == ["T-1", "T-2"]


async def test_a_message_waits_for_a_slow_commit_only_on_sqlite(store: Store) -> None:
    """PostgreSQL: a message that arrives while another's transaction is under way is stored in a
    transaction of its own on another of the pool's connections and answered at once. SQLite has
    one writer: it waits for that commit."""
    release = asyncio.Event()

    async def on_event(conn: AsyncConnection, ev: HospitalEvent) -> None:
        if ev.stay_id == "V-SLOW":
            await release.wait()

    service = IntakeService(store.engine, store.table, on_event=on_event)
    slow = asyncio.create_task(service.handle_hl7(adt_bytes(control_id="S-1", visit="V-SLOW")))
    await asyncio.sleep(0.1)
    fast = asyncio.create_task(service.handle_hl7(adt_bytes(control_id="S-2", visit="V-FAST")))
    if store.engine.dialect.name == "postgresql":
        assert msa(await asyncio.wait_for(fast, 10))[1:3] == ["AA", "S-2"]
        assert not slow.done()
        assert await store.control_ids() == ["S-2"]
    else:
        await asyncio.sleep(0.3)
        assert not fast.done()
    release.set()
    answers = await asyncio.gather(slow, fast)
    assert [msa(a)[1] for a in answers] == ["AA", "AA"]
    assert sorted(await store.control_ids()) == ["S-1", "S-2"]
