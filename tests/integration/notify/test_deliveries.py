"""GET /deliveries (notify): every channel's outbound deliveries across cases, newest first, filtered by
time, recipient, channel, status and case — the operator all, an organisation those of the cases it
owns and those it received (filtered before the limit), a person 403. On SQLite and PostgreSQL
(SIP_TEST_DATABASE), notifications made by the real handler."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import pytest

from services.notify.adapters.store import SqlNotificationRepository, notifications
from services.notify.app import create_app
from services.notify.handlers import accept_invitation
from services.notify.settings import NotifySettings
from shared.clock import FixedClock
from shared.contracts import SendInvitation
from shared.directory import load_directory
from tests.conftest import TEST_JWT_SECRET
from tests.integration.notify.test_access import (
    CALLERS,
    COVERED,
    HOSPITAL,
    OWNER,
    PARTICIPANT,
    directory_file,
)

NOW = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@pytest.fixture
async def world(tmp_path):
    settings = NotifySettings(
        data_dir=str(tmp_path), directory_path=str(directory_file(tmp_path)), auth_required=True,
        jwt_hs256_secret=TEST_JWT_SECRET,
    )  # fmt: skip
    app = create_app(settings)
    rt = app.state.runtime
    await rt.prepare_database()
    directory = load_directory(settings.directory_path)
    first, second = uuid4(), uuid4()
    # the first case (owner VC001) at 08:00 to the kommun and the hospital; the second (owner VC002)
    # an hour later to the kommun only
    for case_id, owner, recipients, at in (
        (first, OWNER, (PARTICIPANT, HOSPITAL), NOW),
        (second, COVERED, (PARTICIPANT,), NOW + timedelta(hours=1)),
    ):
        cmd = SendInvitation(
            case_id=case_id, case_reference=f"SIP-{case_id.hex[:6]}", consent_id=uuid4(), recipients=recipients,
            invitation_due_at=at + timedelta(days=3), plan_url=f"https://sip.example/fhir/CarePlan/{case_id}",
            organizer_hsa_id=owner,
        )  # fmt: skip
        async with rt.unit_of_work() as uow:
            await accept_invitation(
                cmd, directory=directory, repo=SqlNotificationRepository(uow.conn), clock=FixedClock(at)
            )
    async with rt.engine.begin() as conn:  # the hospital's delivery failed
        await conn.execute(
            notifications.update()
            .where(notifications.c.recipient_hsa_id == HOSPITAL)
            .values(status="failed", last_error="550 mailbox unavailable")
        )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notify") as http:
        yield http, first, second
    await rt.engine.dispose()


async def deliveries(http, who: str, **params) -> list[dict]:
    r = await http.get("/deliveries", params=params, headers=CALLERS[who])
    assert r.status_code == 200, r.text
    return r.json()


def pairs(found: list[dict]) -> list[tuple[str, str]]:
    return [(d["case_id"], d["recipient_hsa_id"]) for d in found]


async def test_the_operator_finds_deliveries_by_each_field_newest_first(world):
    http, first, second = world
    every = await deliveries(http, "operator")
    assert pairs(every)[0] == (str(second), PARTICIPANT)
    assert sorted(pairs(every)) == sorted(
        [(str(first), PARTICIPANT), (str(first), HOSPITAL), (str(second), PARTICIPANT)]
    )
    assert "address" not in every[0] and "body" not in every[0] and "subject" not in every[0]
    assert pairs(await deliveries(http, "operator", recipient=HOSPITAL)) == [(str(first), HOSPITAL)]
    failed = await deliveries(http, "operator", status="failed")
    assert pairs(failed) == [(str(first), HOSPITAL)] and failed[0]["last_error"].startswith("550")
    assert {d["recipient_hsa_id"] for d in await deliveries(http, "operator", status="pending")} == {
        PARTICIPANT
    }
    assert len(await deliveries(http, "operator", case_id=str(first))) == 2
    assert len(await deliveries(http, "operator", channel="email")) == len(
        [d for d in every if d["channel"] == "email"]
    )
    assert await deliveries(http, "operator", channel="sms") == []  # the directory has no SMS channel here
    later = (NOW + timedelta(minutes=30)).isoformat()
    assert pairs(await deliveries(http, "operator", since=later)) == [(str(second), PARTICIPANT)]
    assert {p[0] for p in pairs(await deliveries(http, "operator", until=later))} == {str(first)}
    assert pairs(await deliveries(http, "operator", limit=1)) == [(str(second), PARTICIPANT)]
    assert (
        await http.get("/deliveries", params={"status": "bogus"}, headers=CALLERS["operator"])
    ).status_code == 422
    assert (
        await http.get("/deliveries", params={"limit": 0}, headers=CALLERS["operator"])
    ).status_code == 422


async def test_organisations_see_their_own_and_their_cases_deliveries_persons_are_refused(world):
    http, first, second = world
    assert sorted(pairs(await deliveries(http, "owner"))) == sorted(
        [(str(first), PARTICIPANT), (str(first), HOSPITAL)]
    )
    # filtered before the limit: the newest delivery is not the hospital's
    assert pairs(await deliveries(http, "hospital", limit=1)) == [(str(first), HOSPITAL)]
    assert {p[0] for p in pairs(await deliveries(http, "participant"))} == {str(first), str(second)}
    assert pairs(await deliveries(http, "covered")) == [(str(second), PARTICIPANT)]  # owns the second case
    assert await deliveries(http, "stranger") == []
    assert await deliveries(http, "owner", recipient=PARTICIPANT, case_id=str(second)) == []
    for who in ("person", "guardian"):
        assert (await http.get("/deliveries", headers=CALLERS[who])).status_code == 403
    assert (await http.get("/deliveries")).status_code == 401
