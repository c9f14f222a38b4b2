"""Two changes of one case at the same time, on PostgreSQL (each in its own transaction, as two consumers
or a consumer and an HTTP command would run them).

Regression: planning read the case, changed it and wrote it back without a lock. On PostgreSQL three
participants' InvitationSent arriving together all saw "invitation_requested", all moved the case to
"invited" and all wrote plan version 2: two of them failed on the version's key and went to the retry
queue, so for a while the case knew of one invited participant only (a meeting scheduled in that window
was sent to that one alone). The case's row is now locked by the read that starts a change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import uuid4

import pytest

from services.planning import handlers
from services.planning.adapters import deadline_store as ds
from services.planning.adapters.store import SqlCaseRepository, metadata
from shared.clock import FixedClock
from shared.contracts import ConsentGranted, InvitationSent
from shared.persistence import make_engine
from tests.support.personnummer import ADULT
from tests.unit.planning.test_planning_handlers import DIRECTORY, NOW, Outbox, discharge

pytestmark = pytest.mark.postgres

PARTICIPANTS = ("SE2120001-SOC0180", "SE2321000016-VC001", "SE2321000016-SJH01")


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator:
    engine = make_engine(pg_url)
    async with engine.begin() as c:
        await c.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


def _deadlines(c, with_deadlines: bool):  # type: ignore[no-untyped-def]
    return ds.SqlDeadlines(c) if with_deadlines else None


async def _case_awaiting_invitations(engine, *, with_deadlines: bool = False):  # type: ignore[no-untyped-def]
    async with engine.begin() as c:
        repo = SqlCaseRepository(c)
        case = await handlers.handle_discharge(
            discharge(), repo=repo, outbox=Outbox(), directory=DIRECTORY, clock=FixedClock(NOW),
            deadlines=_deadlines(c, with_deadlines),
        )  # fmt: skip
        await handlers.handle_consent_granted(
            ConsentGranted(consent_id=uuid4(), case_id=case.id, patient_identifier=ADULT,
                           purposes=("draw-up-plan", "send-invitation"), recipients=PARTICIPANTS),
            repo=repo, outbox=Outbox(), clock=FixedClock(NOW), web_base_url="x",
            deadlines=_deadlines(c, with_deadlines),
        )  # fmt: skip
    return case


async def _invitations_sent_together(engine, case, sent_at, *, with_deadlines: bool = False) -> list:  # type: ignore[no-untyped-def]
    """One InvitationSent per participant, each in its own open transaction, let go at once."""
    start = asyncio.Event()

    async def invitation_sent(hsa_id: str):  # type: ignore[no-untyped-def]
        async with engine.begin() as c:
            await start.wait()
            return await handlers.handle_invitation_sent(
                InvitationSent(case_id=case.id, notification_id=uuid4(), recipient_hsa_id=hsa_id,
                               channel="email", sent_at=sent_at),
                repo=SqlCaseRepository(c), clock=FixedClock(NOW), deadlines=_deadlines(c, with_deadlines),
            )  # fmt: skip

    tasks = [asyncio.create_task(invitation_sent(h)) for h in PARTICIPANTS]
    await asyncio.sleep(0.2)  # all three transactions open
    start.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_invitations_sent_together_are_all_recorded_and_version_the_plan_once(engine) -> None:
    case = await _case_awaiting_invitations(engine)
    sent_at = NOW + timedelta(hours=1)
    results = await _invitations_sent_together(engine, case, sent_at)

    assert [r for r in results if isinstance(r, BaseException)] == []  # none collided
    assert sum(r is not None for r in results) == 1  # exactly one moved the case to "invited"
    async with engine.connect() as c:
        repo = SqlCaseRepository(c)
        assert await repo.invited_recipients(case.id) == sorted(PARTICIPANTS)
        stored = await repo.get_case(case.id)
        assert stored.state == "invited" and stored.invited_at == sent_at
        assert sorted(v.version for v in await repo.plan_versions(case.id)) == [1, 2]


async def test_a_change_waits_for_the_one_holding_the_case(engine) -> None:
    """The lock itself: a second read-for-change of the case waits until the first transaction ends."""
    case = await _case_awaiting_invitations(engine)
    order: list[str] = []
    async with engine.begin() as first:
        await SqlCaseRepository(first).get_case(case.id, for_update=True)

        async def second() -> None:
            async with engine.begin() as c:
                await SqlCaseRepository(c).get_case(case.id, for_update=True)
                order.append("second")

        task = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        order.append("first commits")
    await asyncio.wait_for(task, 10)
    assert order == ["first commits", "second"]
    # a plain read never waits
    async with engine.begin() as holder:
        await SqlCaseRepository(holder).get_case(case.id, for_update=True)
        async with engine.connect() as reader:
            assert (await asyncio.wait_for(SqlCaseRepository(reader).get_case(case.id), 5)).id == case.id


async def test_invitations_sent_together_meet_the_deadline_and_start_the_meeting_clock_once(engine) -> None:
    """The same with the deadlines: the one that moves the case meets the invitation deadline and starts
    the meeting clock (one read of the cycles, the rows answered as stored), the others touch neither."""
    case = await _case_awaiting_invitations(engine, with_deadlines=True)
    sent_at = NOW + timedelta(hours=1)
    results = await _invitations_sent_together(engine, case, sent_at, with_deadlines=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sum(r is not None for r in results) == 1
    async with engine.connect() as c:
        history = await ds.history_for(c, case.id)
        assert await SqlCaseRepository(c).invited_recipients(case.id) == sorted(PARTICIPANTS)
        assert sorted(v.version for v in await SqlCaseRepository(c).plan_versions(case.id)) == [1, 2]
    assert sorted((d.kind, d.cycle, d.status) for d in history) == [
        ("invitation", 1, "met"), ("meeting", 1, "pending"),
    ]  # fmt: skip
    [met] = [d for d in history if d.kind == "invitation"]
    assert met.met_at == sent_at
