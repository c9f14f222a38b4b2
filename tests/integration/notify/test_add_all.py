"""A command's notifications are stored together (issue 21: fewer round trips per discharge): one
INSERT for the notifications and one per detail table, the ones whose dedupe key is there already (or
taken by another of the same batch) left out, every detail as stored one by one. On SQLite and
PostgreSQL (SIP_TEST_DATABASE)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from sqlalchemy import event

from services.notify.adapters.store import SqlNotificationRepository
from services.notify.app import create_app
from services.notify.handlers import accept_invitation
from services.notify.settings import NotifySettings
from shared.clock import FixedClock
from shared.contracts import MeetingNeeds, SendInvitation
from shared.directory import load_directory
from tests.integration.notify.test_access import HOSPITAL, OWNER, PARTICIPANT, directory_file

NOW = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@pytest.fixture
async def runtime(tmp_path):
    settings = NotifySettings(data_dir=str(tmp_path), directory_path=str(directory_file(tmp_path)))
    rt = create_app(settings).state.runtime
    await rt.prepare_database()
    yield rt, load_directory(settings.directory_path)
    await rt.engine.dispose()


async def test_a_commands_notifications_go_in_together_and_a_taken_key_is_left_out(runtime) -> None:
    rt, directory = runtime
    case_id = uuid4()
    cmd = SendInvitation(
        case_id=case_id, case_reference="SIP-ADDALL", consent_id=uuid4(), recipients=(PARTICIPANT, HOSPITAL),
        invitation_due_at=NOW + timedelta(days=3), plan_url=f"https://sip.example/fhir/CarePlan/{case_id}",
        organizer_hsa_id=OWNER, meeting_needs=MeetingNeeds(interpreter_language="ar", picture_support=True),
    )  # fmt: skip
    inserts: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement.split("(")[0].split()[-1])

    event.listen(rt.engine.sync_engine, "before_cursor_execute", count)
    async with rt.unit_of_work() as uow:
        created = await accept_invitation(
            cmd, directory=directory, repo=SqlNotificationRepository(uow.conn), clock=FixedClock(NOW)
        )
    event.remove(rt.engine.sync_engine, "before_cursor_execute", count)
    assert len(created) >= 2
    # one statement per table, whatever the number of recipients and channels
    assert sorted(inserts) == sorted(
        ["notifications", "notification_details", "notification_consents", "notification_needs"]
    ), inserts

    async with rt.unit_of_work() as uow:
        repo = SqlNotificationRepository(uow.conn)
        stored = {n.id: n for n in await repo.for_case(case_id)}
        assert set(stored) == {n.id for n in created}
        for n in created:  # every detail reads back as one stored alone would
            assert stored[n.id] == n
        again = [replace(n, id=uuid4()) for n in created]  # the same dedupe keys under new ids
        fresh = replace(created[0], id=uuid4(), cause_message_id="another-cause")
        twin = replace(fresh, id=uuid4())  # the same key as `fresh`, in the same batch
        assert await repo.add_all([*again, fresh, twin]) == [fresh]
        assert await repo.add_all([]) == []
    async with rt.unit_of_work() as uow:
        ids = {n.id for n in await SqlNotificationRepository(uow.conn).for_case(case_id)}
    assert ids == {n.id for n in created} | {fresh.id}
