"""Who may see and change what in planning (services/planning/access.py): every route by every caller
kind, against the app in-process with authentication on, cases made by the real handlers on SQLite and
a consent gate that answers from a table. Reads answer exactly the records the caller may see, and
each read of a case or plan leaves a consent.access-recorded.v1 in the outbox with the right basis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pytest
import sqlalchemy as sa
import yaml

from services.planning import handlers
from services.planning.adapters.deadline_store import SqlDeadlines
from services.planning.adapters.store import SqlCaseRepository
from services.planning.app import create_app
from services.planning.deadlines import DeadlinePolicy
from services.planning.settings import PlanningSettings
from services.planning.stays import Stay
from shared.access import CALLER_KINDS, EXTENSION
from shared.auth import OPEN_PATHS, mint_person_token, mint_token
from shared.clock import FixedClock
from shared.contracts import ConsentDecisionReply, ConsentGranted, DischargeNotified
from shared.directory import load_directory
from shared.identifiers import PERSONNUMMER_SYSTEM
from tests.conftest import TEST_JWT_SECRET
from tests.support.personnummer import ADULTS, CHILD

REPO = Path(__file__).resolve().parents[3]
OWNER, PARTICIPANT, HOSPITAL = "SE2321000016-VC001", "SE2120001-SOC0180", "SE2321000016-SJH01"
COVERED, EXCLUDED = "SE2321000016-VC002", "SE2120001-SOC0184"
OPERATOR, STRANGER = "SE2321000016-OPS01", "SE2321000016-XYZ01"
PERSON, GUARDIAN, GUARDIAN_2, OTHER_PERSON, PENDING = ADULTS[3], ADULTS[4], ADULTS[5], ADULTS[7], ADULTS[6]
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def org(hsa_id: str, **kw) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, hsa_id, subject='coordinator', **kw)}"}


def person(pnr: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_person_token(TEST_JWT_SECRET, pnr)}"}


CALLERS = {
    "owner": org(OWNER),
    "participant": org(PARTICIPANT),
    "hospital": org(HOSPITAL),
    "covered": org(COVERED),
    "excluded": org(EXCLUDED),
    "operator": org(OPERATOR, operator=True),
    "person": person(PERSON),
    "guardian": person(GUARDIAN),
    "stranger": org(STRANGER),
    "other person": person(OTHER_PERSON),
}


class TableGate:
    """The consent gate, answering from a table: (case id, organisation) → permit; excluded → deny."""

    def __init__(self) -> None:
        self.permits: set[tuple[UUID, str]] = set()
        self.excluded: set[tuple[UUID, str]] = set()
        self.asked = 0

    async def decide(self, *, case_id: UUID, recipient_hsa_id: str, **_: object) -> ConsentDecisionReply:
        self.asked += 1
        if (case_id, recipient_hsa_id) in self.excluded:
            return ConsentDecisionReply(decision="deny", reason="organisation-excluded", basis="none")
        if (case_id, recipient_hsa_id) in self.permits:
            return ConsentDecisionReply(decision="permit", reason="consent-permits", basis="consent")
        return ConsentDecisionReply(decision="deny", reason="no-consent", basis="none")

    async def aclose(self) -> None:
        pass


def directory_file(tmp: Path) -> Path:
    data = yaml.safe_load((REPO / "config/directory.yaml").read_text())
    for hsa_id in (OPERATOR, STRANGER):
        data["organisations"].append({"hsa_id": hsa_id, "name": hsa_id, "kind": "other", "channels": []})
    path = tmp / "directory.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


class World:
    def __init__(self, app, gate: TableGate) -> None:
        self.app, self.gate = app, gate
        self.rt = app.state.runtime
        self.cases: dict[str, UUID] = {}
        self.stays: dict[str, str] = {}
        self.http: httpx.AsyncClient
        self.directory_path = ""

    async def get(self, who: str, path: str, **params) -> httpx.Response:
        return await self.http.get(path, params=params, headers=CALLERS[who])

    async def mark(self) -> int:
        async with self.rt.engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(self.rt.outbox.c.id), 0))))

    async def recorded(self, since: int) -> list[dict]:
        outbox = self.rt.outbox
        q = sa.select(outbox.c.body).where(
            outbox.c.id > since, outbox.c.routing_key == "consent.access-recorded.v1"
        )
        async with self.rt.engine.connect() as conn:
            return [json.loads(b) for b in (await conn.execute(q.order_by(outbox.c.id))).scalars()]


async def open_case(world: World, name: str, pnr: str, at: datetime, unit: str = OWNER, **consent) -> UUID:
    directory = load_directory(world.directory_path)
    ev = DischargeNotified(
        episode_id=f"AC-{name}", hospital_hsa_id=HOSPITAL,
        patient={"identifier": pnr, "kommun_code": "0180", "primary_care_unit_hsa_id": unit},
        ready_for_discharge_at=at, needs_kommun_support=True, needs_region_support=True,
    )  # fmt: skip
    outbox = []

    class Out:
        async def send(self, m) -> None:
            outbox.append(m)

    async with world.rt.unit_of_work() as uow:
        repo = SqlCaseRepository(uow.conn)
        case = await handlers.handle_discharge(
            ev, repo=repo, outbox=Out(), directory=directory, clock=FixedClock(at),
            deadlines=SqlDeadlines(uow.conn),
        )  # fmt: skip
        if consent:
            granted = ConsentGranted(
                consent_id=uuid4(), case_id=case.id, patient_identifier=pnr,
                purposes=("draw-up-plan", "send-invitation"), recipients=(unit, PARTICIPANT, HOSPITAL),
                guardian_identifiers=consent.get("guardians", ()),
            )  # fmt: skip
            await handlers.handle_consent_granted(
                granted, repo=repo, outbox=Out(), clock=FixedClock(at), web_base_url="https://sip.example",
                deadlines=SqlDeadlines(uow.conn), policy=DeadlinePolicy(),
            )  # fmt: skip
    world.cases[name] = case.id
    return case.id


@pytest.fixture
async def world(tmp_path):
    gate = TableGate()
    settings = PlanningSettings(
        data_dir=str(tmp_path), directory_path=str(directory_file(tmp_path)), auth_required=True,
        jwt_hs256_secret=TEST_JWT_SECRET,
    )  # fmt: skip
    app = create_app(settings, consent_gate=gate)  # type: ignore[arg-type]
    w = World(app, gate)
    w.directory_path = settings.directory_path
    await w.rt.prepare_database()  # no broker: the routes need the database and the gate only
    # the adult's case (consented: the participants, the hospital and one more unit; one unit excluded),
    # the child's (two guardians named on the consent), one waiting for consent, one more of the owner's,
    # and two newer cases of another unit (a search that counted before filtering came back short)
    a = await open_case(w, "adult", PERSON, T0, consent=True)
    c = await open_case(
        w, "child", CHILD, T0 + timedelta(minutes=1), consent=True, guardians=(GUARDIAN, GUARDIAN_2)
    )
    p = await open_case(w, "pending", PENDING, T0 + timedelta(minutes=2))
    d = await open_case(w, "more", ADULTS[8], T0 + timedelta(minutes=3), consent=True)
    await open_case(w, "other-1", ADULTS[9], T0 + timedelta(minutes=4), unit=COVERED, consent=True)
    await open_case(w, "other-2", ADULTS[10], T0 + timedelta(minutes=5), unit=COVERED, consent=True)
    gate.permits |= {(a, PARTICIPANT), (a, HOSPITAL), (a, COVERED), (c, PARTICIPANT), (c, HOSPITAL)}
    gate.permits |= {(d, PARTICIPANT)}
    gate.excluded |= {(a, EXCLUDED)}
    assert p
    async with w.rt.unit_of_work() as uow:
        repo = SqlCaseRepository(uow.conn)
        # the newest stay is another hospital's: a limit applied before the filter would hide SJH's
        stay = Stay(hospital_id="SE2321000016-KS001", stay_id="STAY-KS", patient_system=PERSONNUMMER_SYSTEM,
                    patient_value=PENDING, patient_kind="personnummer")  # fmt: skip
        await repo.save_stay(stay, T0 + timedelta(hours=1), new=True)
        for s in await repo.list_stays():
            w.stays[s.stay_id] = s.hospital_id
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://planning") as http:
        w.http = http
        yield w
    await w.rt.engine.dispose()


def test_every_route_declares_a_rule_over_every_caller_kind(tmp_path):
    """From the OpenAPI document (an included router's routes are not in ``app.routes`` itself)."""
    app = create_app(PlanningSettings(data_dir=str(tmp_path), directory_path=str(directory_file(tmp_path))))
    found = 0
    for path, operations in app.openapi()["paths"].items():
        if path in OPEN_PATHS:
            continue
        for method, op in operations.items():
            rule = op.get(EXTENSION)
            assert rule is not None, (method, path)
            assert set(rule["callers"]) == set(CALLER_KINDS), (method, path)
            found += 1
    assert found >= 20


READS = [
    "/cases/{adult}",
    "/cases/{adult}/deadlines",
    "/fhir/CarePlan/{adult}",
    "/fhir/CarePlan/{adult}/_history",
    "/fhir/CarePlan/{adult}/_history/1",
]
READ_STATUS = {
    "owner": 200, "participant": 200, "hospital": 200, "covered": 200, "excluded": 404, "operator": 403,
    "person": 200, "guardian": 404, "stranger": 404, "other person": 404,
}  # fmt: skip
READ_BASIS = {
    "owner": ("permit", "owner", "organisation"), "participant": ("permit", "covered", "organisation"),
    "hospital": ("permit", "covered", "organisation"), "covered": ("permit", "covered", "organisation"),
    "excluded": ("deny", "none", "organisation"), "operator": ("deny", "operator", "operator"),
    "person": ("permit", "own-data", "person"), "guardian": ("deny", "none", "person"),
    "stranger": ("deny", "none", "organisation"), "other person": ("deny", "none", "person"),
}  # fmt: skip


async def test_reads_of_a_case_and_its_plan_by_every_caller_kind_each_recorded(world):
    adult = world.cases["adult"]
    for template in [*READS, "/fhir/Provenance"]:
        path = template.format(adult=adult)
        params = {"target": f"CarePlan/{adult}"} if template == "/fhir/Provenance" else {}
        for who, status in READ_STATUS.items():
            mark = await world.mark()
            r = await world.get(who, path, **params)
            assert r.status_code == status, (path, who, r.status_code, r.text[:200])
            if path.startswith("/fhir"):
                assert (r.json()["resourceType"] == "OperationOutcome") is (status != 200), (path, who)
            assert PERSON not in r.text or status == 200  # a refusal never names the person
            [rec] = await world.recorded(mark)
            outcome, basis, kind = READ_BASIS[who]
            assert (rec["outcome"], rec["basis"], rec["reader_kind"]) == (outcome, basis, kind), (path, who)
            assert rec["service"] == "planning" and rec["action"] == "read"
            assert rec["case_id"] == str(adult) and rec["patient_identifier"] == PERSON
            assert PERSON not in rec["what"] and len(rec["what"]) <= 64
            if who == "owner":
                assert rec["reader_hsa_id"] == OWNER and rec["reader_subject"] == "coordinator"
            if who == "person":
                assert rec["reader_hsa_id"] is None


async def test_a_person_reads_only_their_own_case_and_a_guardian_only_the_child(world):
    adult, child = world.cases["adult"], world.cases["child"]
    assert (await world.get("person", f"/fhir/CarePlan/{adult}")).status_code == 200
    assert (await world.get("person", f"/fhir/CarePlan/{child}")).status_code == 404
    assert (await world.get("person", f"/cases/{world.cases['pending']}")).status_code == 404
    mark = await world.mark()
    r = await world.get("guardian", f"/fhir/CarePlan/{child}")
    assert r.status_code == 200 and r.json()["id"] == str(child)
    [rec] = await world.recorded(mark)
    assert (rec["basis"], rec["reader_kind"], rec["patient_identifier"]) == ("guardian", "guardian", CHILD)
    assert (await world.http.get(f"/cases/{child}", headers=person(GUARDIAN_2))).status_code == 200
    assert (await world.get("guardian", f"/cases/{adult}")).status_code == 404


async def test_listings_are_filtered_for_every_caller_kind(world):
    cs = world.cases
    mine = {cs["adult"], cs["child"], cs["pending"], cs["more"]}
    everything = set(cs.values())
    others = {cs["other-1"], cs["other-2"]}
    expected = {
        "owner": mine, "participant": everything, "hospital": everything, "covered": others,
        "excluded": set(), "operator": everything, "person": {cs["adult"]}, "guardian": {cs["child"]},
        "stranger": set(), "other person": set(),
    }  # fmt: skip
    for who, want in expected.items():
        mark = await world.mark()
        got = {UUID(c["id"]) for c in (await world.get(who, "/cases", all="true")).json()}
        assert got == want, who
        overview = {UUID(r["case_id"]) for r in (await world.get(who, "/overview")).json()}
        assert overview <= want and (overview or not want), who
        assert await world.recorded(mark) == []  # masked listings are not recorded
        assert PERSON not in (await world.get(who, "/cases", all="true")).text  # masked


async def test_stays_only_for_their_hospital_and_the_operator(world):
    expected = {who: set() for who in CALLERS}
    expected["hospital"] = {s for s, h in world.stays.items() if h == HOSPITAL}
    expected["operator"] = set(world.stays)
    for who, want in expected.items():
        r = await world.get(who, "/stays", limit=1 if who == "hospital" else 200)
        got = {s["stay_id"] for s in r.json()}
        if who == "hospital":  # filtered before the limit: the newest of its own, not someone else's
            assert got == {"AC-other-2"}, got
            got = {s["stay_id"] for s in (await world.get(who, "/stays")).json()}
        assert r.status_code == 200 and got == want, who


async def test_care_plan_search_filters_before_count_and_pages_through_every_visible_plan(world):
    cs = world.cases
    expected = {
        "owner": {cs["adult"], cs["child"], cs["more"]},  # the pending case has no plan yet
        "participant": {cs["adult"], cs["child"], cs["more"]}, "hospital": {cs["adult"], cs["child"]},
        "covered": {cs["adult"], cs["other-1"], cs["other-2"]}, "excluded": set(), "operator": set(),
        "person": {cs["adult"]}, "guardian": {cs["child"]}, "stranger": set(), "other person": set(),
    }  # fmt: skip
    for who, want in expected.items():
        seen: list[UUID] = []
        offset = 0
        while True:
            r = await world.get(who, "/fhir/CarePlan", _count=2, _offset=offset)
            assert r.status_code == 200, (who, r.text[:200])
            body = r.json()
            assert body["total"] == len(want), who
            page = [UUID(e["resource"]["id"]) for e in body.get("entry", [])]
            assert len(page) == min(2, len(want) - offset), who  # never short because of filtering
            seen += page
            nxt = [link["url"] for link in body.get("link", []) if link["relation"] == "next"]
            if not nxt:
                break
            assert f"_offset={offset + 2}" in nxt[0]
            offset += 2
        assert set(seen) == want and len(seen) == len(want), who


async def test_a_search_records_what_it_showed_and_what_it_refused(world):
    cs = world.cases
    mark = await world.mark()
    r = await world.get("owner", "/fhir/CarePlan", patient=PERSON)
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [str(cs["adult"])]
    [rec] = await world.recorded(mark)
    assert (rec["action"], rec["outcome"], rec["basis"], rec["what"]) == (
        "search",
        "permit",
        "owner",
        "CarePlan?patient",
    )
    mark = await world.mark()
    r = await world.get("hospital", "/fhir/CarePlan", patient=ADULTS[8])  # taking part, not consented
    assert r.json()["total"] == 0
    [rec] = await world.recorded(mark)
    assert (rec["outcome"], rec["basis"], rec["case_id"]) == ("deny", "participant", str(cs["more"]))
    mark = await world.mark()
    assert (await world.get("stranger", "/fhir/CarePlan", patient=PERSON)).json()["total"] == 0
    [rec] = await world.recorded(mark)  # a search for the person that showed nothing is in the trail too
    assert (rec["outcome"], rec["basis"], rec["patient_identifier"], rec["case_id"]) == (
        "deny",
        "none",
        PERSON,
        None,
    )


COMMANDS = {
    "owner": 409, "participant": 409, "hospital": 409, "covered": 404, "excluded": 404, "operator": 404,
    "person": 403, "guardian": 403, "stranger": 404, "other person": 403,
}  # fmt: skip


async def test_commands_by_every_caller_kind(world):
    adult = world.cases["adult"]
    for who, status in COMMANDS.items():  # the adult's case is past the proposal: refusing it is a 409
        r = await world.http.post(
            f"/cases/{adult}/refuse", json={"reason": "Inte aktuellt"}, headers=CALLERS[who]
        )
        assert r.status_code == status, (who, r.text[:200])
        r = await world.http.post(f"/cases/{adult}/accept", headers=CALLERS[who])
        assert r.status_code == status, (who, r.text[:200])


async def test_a_proposal_is_made_by_the_calling_organisation_itself(world):
    body = {"patient_identifier": PENDING, "kommun_code": "0180", "proposed_by": "professional"}
    spoofed = {**body, "proposer_hsa_id": PARTICIPANT}
    assert (await world.http.post("/cases", json=spoofed, headers=CALLERS["owner"])).status_code == 403
    assert (await world.http.post("/cases", json=body, headers=CALLERS["person"])).status_code == 403
    assert (await world.http.post("/cases", json=body, headers=CALLERS["guardian"])).status_code == 403
    r = await world.http.post("/cases", json={**body, "proposer_hsa_id": OWNER}, headers=CALLERS["owner"])
    assert r.status_code == 201, r.text
    r = await world.http.post("/cases", json=body, headers=CALLERS["participant"])
    assert r.status_code == 201, r.text
    # over FHIR: the author must be the caller, and a person's token is refused before the body is read
    plan = {"resourceType": "CarePlan", "status": "draft", "intent": "plan",
            "subject": {"identifier": {"system": PERSONNUMMER_SYSTEM, "value": PENDING}},
            "author": {"identifier": {"value": PARTICIPANT}}}  # fmt: skip
    assert (await world.http.post("/fhir/CarePlan", json=plan, headers=CALLERS["owner"])).status_code == 403
    r = await world.http.post("/fhir/CarePlan", json={"resourceType": "CarePlan"}, headers=CALLERS["person"])
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"


async def test_hospital_messages_only_from_a_hospital(world):
    msg = {"resourceType": "Bundle", "type": "message"}
    for who in CALLERS:
        r = await world.http.post("/fhir/$process-message", json=msg, headers=CALLERS[who])
        if who == "hospital":
            assert r.status_code in (400, 422), r.text[:200]  # looked at: refused for what it says
        else:
            assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome", who


async def test_an_older_sqlite_database_gets_the_guardians_column(tmp_path):
    from services.planning.adapters.store import metadata, upgrade_schema
    from shared.persistence import make_engine

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(sa.text("ALTER TABLE sip_cases DROP COLUMN guardians"))
    async with engine.begin() as conn:
        await conn.run_sync(upgrade_schema)
        await conn.run_sync(upgrade_schema)  # idempotent
        columns = await conn.run_sync(lambda c: {x["name"] for x in sa.inspect(c).get_columns("sip_cases")})
    assert "guardians" in columns
    await engine.dispose()
