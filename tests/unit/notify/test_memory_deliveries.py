"""The in-memory repository answers ``deliveries`` (the port's read behind ``GET /deliveries``) as the
SQL store does: the same notifications, made by the real handler and stored in SQLite, asked the same
questions of both — filters, the time window, what an organisation sees, newest first, the limit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from services.notify import handlers
from services.notify.adapters.memory import InMemoryNotificationRepository
from services.notify.adapters.store import SqlNotificationRepository, notifications
from shared.clock import FixedClock
from shared.directory import load_directory
from tests.unit.notify.conftest import T0
from tests.unit.notify.test_subscriber_and_handler import invitation

SOC, VC = "SE2120001-SOC0180", "SE2321000016-VC001"


async def test_the_in_memory_deliveries_agree_with_the_sql_store(app, settings):
    rt = app.state.runtime
    directory = load_directory(settings.directory_path)
    cases = []
    # three cases an hour apart: VC's to both (four deliveries at one instant), SOC's to VC (three), VC's to SOC
    for hours, owner, recipients in ((0, VC, (SOC, VC)), (1, SOC, (VC,)), (2, VC, (SOC,))):
        cmd = invitation(*recipients, organizer_hsa_id=owner)
        cases.append(cmd.case_id)
        async with rt.unit_of_work() as uow:
            await handlers.accept_invitation(
                cmd, directory=directory, repo=SqlNotificationRepository(uow.conn),
                clock=FixedClock(T0 + timedelta(hours=hours)),
            )  # fmt: skip
    async with rt.engine.begin() as conn:  # the SMS of the first case failed
        await conn.execute(
            notifications.update()
            .where(sa.and_(notifications.c.case_id == str(cases[0]), notifications.c.channel == "sms"))
            .values(status="failed", last_error="gateway said no")
        )
    memory = InMemoryNotificationRepository()
    async with rt.engine.connect() as conn:
        sql = SqlNotificationRepository(conn)
        for case_id in cases:
            for n in await sql.for_case(case_id):
                assert await memory.add(n)
        questions: list[dict[str, Any]] = [
            {},
            {"limit": 3},
            {"recipient": VC},
            {"channel": "email"},
            {"status": "failed"},
            {"status": "pending", "channel": "webhook"},
            {"case_id": cases[1]},
            {"since": T0 + timedelta(hours=1)},
            {"until": T0 + timedelta(hours=1)},
            {"since": T0 + timedelta(minutes=30), "until": T0 + timedelta(hours=2)},
            {"seen_by": SOC},
            {"seen_by": VC, "limit": 2},
            {"seen_by": "SE2321000016-NONE"},
        ]
        for q in questions:
            expected = await sql.deliveries(**q)
            assert await memory.deliveries(**q) == expected, q
    everything = await memory.deliveries()
    assert len(everything) == 8  # 4 + 3 + 1
    assert [n.case_id for n in everything[:1]] == [cases[2]]  # newest first
    assert {n.case_id for n in await memory.deliveries(seen_by=SOC)} == {cases[0], cases[1], cases[2]}
    assert await memory.deliveries(seen_by="SE2321000016-NONE") == []
