"""Who may read what notify sent (services/notify/access.py): every route by every caller kind, against
the app in-process with authentication on, notifications made by the real handler on SQLite. The
recipient reads its own, the case's owning unit and the operator all; each read leaves a
consent.access-recorded.v1 (with the case, never a patient) in the outbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
import sqlalchemy as sa
import yaml

from services.notify.adapters.store import SqlNotificationRepository, metadata, upgrade_schema
from services.notify.app import create_app
from services.notify.handlers import accept_invitation, escalate_deadline
from services.notify.settings import NotifySettings
from shared.access import CALLER_KINDS, EXTENSION
from shared.auth import OPEN_PATHS, mint_person_token, mint_token
from shared.clock import FixedClock
from shared.contracts import DeadlineBreached, SendInvitation
from shared.directory import load_directory
from shared.persistence import make_engine
from tests.conftest import TEST_JWT_SECRET
from tests.support.personnummer import ADULTS, CHILD

REPO = Path(__file__).resolve().parents[3]
OWNER, PARTICIPANT, HOSPITAL = "SE2321000016-VC001", "SE2120001-SOC0180", "SE2321000016-SJH01"
COVERED, OPERATOR, STRANGER = "SE2321000016-VC002", "SE2321000016-OPS01", "SE2321000016-XYZ01"
NOW = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def org(hsa_id: str, **kw) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, hsa_id, subject='coordinator', **kw)}"}


CALLERS = {
    "owner": org(OWNER),
    "participant": org(PARTICIPANT),
    "hospital": org(HOSPITAL),  # written to about the case too, but not this notification
    "covered": org(COVERED),
    "operator": org(OPERATOR, operator=True),
    "person": {"Authorization": f"Bearer {mint_person_token(TEST_JWT_SECRET, ADULTS[3])}"},
    "guardian": {"Authorization": f"Bearer {mint_person_token(TEST_JWT_SECRET, ADULTS[4])}"},
    "stranger": org(STRANGER),
}
BASIS = {"owner": "owner", "participant": "participant", "operator": "operator"}


def directory_file(tmp: Path) -> Path:
    data = yaml.safe_load((REPO / "config/directory.yaml").read_text())
    for hsa_id in (OPERATOR, STRANGER):
        data["organisations"].append({"hsa_id": hsa_id, "name": hsa_id, "kind": "other", "channels": []})
    path = tmp / "directory.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.fixture
async def world(tmp_path):
    settings = NotifySettings(
        data_dir=str(tmp_path), directory_path=str(directory_file(tmp_path)), auth_required=True,
        jwt_hs256_secret=TEST_JWT_SECRET,
    )  # fmt: skip
    app = create_app(settings)
    rt = app.state.runtime
    await rt.prepare_database()  # no broker: the routes need the database only
    directory = load_directory(settings.directory_path)
    case_id = uuid4()
    cmd = SendInvitation(
        case_id=case_id, case_reference="SIP-2026-ACCESS", consent_id=uuid4(), recipients=(PARTICIPANT, HOSPITAL),
        invitation_due_at=NOW + timedelta(days=3), plan_url=f"https://sip.example/fhir/CarePlan/{case_id}",
        organizer_hsa_id=OWNER,
    )  # fmt: skip
    breach = DeadlineBreached(
        case_id=case_id, case_reference="SIP-2026-ACCESS", kind="invitation", cycle=1,
        due_at=NOW - timedelta(hours=1), breached_at=NOW, owner_hsa_id=OWNER,
    )  # fmt: skip
    async with rt.unit_of_work() as uow:
        repo = SqlNotificationRepository(uow.conn)
        made = await accept_invitation(cmd, directory=directory, repo=repo, clock=FixedClock(NOW))
        made += await escalate_deadline(breach, directory=directory, repo=repo, clock=FixedClock(NOW))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notify") as http:
        yield app, http, case_id, made
    await rt.engine.dispose()


async def recorded(app, since: int) -> list[dict]:
    rt = app.state.runtime
    q = sa.select(rt.outbox.c.body).where(
        rt.outbox.c.id > since, rt.outbox.c.routing_key == "consent.access-recorded.v1"
    )
    async with rt.engine.connect() as conn:
        return [json.loads(b) for b in (await conn.execute(q.order_by(rt.outbox.c.id))).scalars()]


async def mark(app) -> int:
    rt = app.state.runtime
    async with rt.engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(rt.outbox.c.id), 0))))


def test_every_route_declares_a_rule_over_every_caller_kind(tmp_path):
    """From the OpenAPI document (an included router's routes are not in ``app.routes`` itself)."""
    app = create_app(NotifySettings(data_dir=str(tmp_path), directory_path=str(directory_file(tmp_path))))
    found = 0
    for path, operations in app.openapi()["paths"].items():
        if path in OPEN_PATHS:
            continue
        for method, op in operations.items():
            rule = op.get(EXTENSION)
            assert rule is not None, (method, path)
            assert set(rule["callers"]) == set(CALLER_KINDS), (method, path)
            found += 1
    assert found >= 3


async def test_the_owner_is_stored_on_every_notification_the_handlers_make(world):
    _, _, _, made = world
    assert made and all(n.owner_hsa_id == OWNER for n in made)


async def test_listing_a_cases_notifications_by_every_caller_kind(world):
    app, http, case_id, made = world
    every = {str(n.id) for n in made}
    expected = {who: set() for who in CALLERS}
    expected["owner"] = expected["operator"] = every
    expected["participant"] = {str(n.id) for n in made if n.recipient_hsa_id == PARTICIPANT}
    expected["hospital"] = {str(n.id) for n in made if n.recipient_hsa_id == HOSPITAL}
    assert expected["participant"] and expected["hospital"] and expected["participant"] != every
    for who, want in expected.items():
        since = await mark(app)
        r = await http.get("/notifications", params={"case_id": str(case_id)}, headers=CALLERS[who])
        assert r.status_code == 200, (who, r.text[:200])
        assert {n["id"] for n in r.json()} == want, who
        records = await recorded(app, since)
        assert {(x["outcome"], x["action"]) for x in records} <= {("permit", "search")}
        assert len(records) == (1 if want else 0), who  # one record per search (BALP: one person)
        assert all(x["case_id"] == str(case_id) and x["patient_identifier"] is None for x in records)


async def test_reading_one_notification_by_every_caller_kind_each_recorded(world):
    app, http, case_id, made = world
    note = next(n for n in made if n.recipient_hsa_id == PARTICIPANT)
    for who, headers in CALLERS.items():
        allowed = who in BASIS
        for path in (f"/notifications/{note.id}", f"/fhir/Communication/{note.id}"):
            since = await mark(app)
            r = await http.get(path, headers=headers)
            assert r.status_code == (200 if allowed else 403), (who, path, r.text[:200])
            if path.startswith("/fhir"):
                assert (r.json()["resourceType"] == "OperationOutcome") is not allowed
            [rec] = await recorded(app, since)
            assert rec["service"] == "notify" and rec["case_id"] == str(case_id)
            assert rec["patient_identifier"] is None
            assert (rec["outcome"], rec["basis"]) == (("permit", BASIS[who]) if allowed else ("deny", "none"))
            assert rec["what"] in (f"Notification/{note.id}", f"Communication/{note.id}")
            kind = (
                "person"
                if who in ("person", "guardian")
                else "operator"
                if who == "operator"
                else "organisation"
            )
            assert rec["reader_kind"] == kind
            for pnr in (ADULTS[3], ADULTS[4], CHILD):
                assert pnr not in json.dumps(rec)
    assert (await http.get(f"/notifications/{uuid4()}", headers=CALLERS["owner"])).status_code == 404


async def test_an_older_sqlite_database_gets_the_owner_column(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/n.db")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(sa.text("ALTER TABLE notifications DROP COLUMN owner_hsa_id"))
    async with engine.begin() as conn:
        await conn.run_sync(upgrade_schema)
        await conn.run_sync(upgrade_schema)  # idempotent
        columns = await conn.run_sync(
            lambda c: {x["name"] for x in sa.inspect(c).get_columns("notifications")}
        )
    assert "owner_hsa_id" in columns
    await engine.dispose()
