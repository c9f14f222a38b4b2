"""The message store (services/planning/messages.py), on SQLite and on PostgreSQL (SIP_TEST_DATABASE):
every inbound message found by each field, newest first and keyset-paged; a patient search and every
raw view audited (message_views + consent.access-recorded.v1 in the outbox); operators only; a replay
after a fix produces the missing effect exactly once, and a replay of an effected message changes nothing.

The planning app runs in-process with authentication on, over its real database. HL7 v2 messages go
through the real intake (the MLLP handler); the stay events it puts in the outbox are handed to the
subscriber's own handler as the broker would deliver them (the broker path itself is covered in
tests/integration/planning/test_deadlines_broker.py and tests/e2e).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

from services.planning.app import create_app
from services.planning.settings import PlanningSettings
from shared.auth import mint_person_token, mint_token
from shared.contracts import HospitalStayEvent
from shared.errors import PermanentError
from tests.conftest import TEST_JWT_SECRET
from tests.support.personnummer import ADULTS
from tests.unit.intake.messages import adt_bytes

REPO = Path(__file__).resolve().parents[3]
OPERATOR, HOSPITAL, UNIT = "SE2321000016-OPS01", "SE2321000016-SJH01", "SE2321000016-VC001"
PNR_A, PNR_B = ADULTS[1], ADULTS[2]
STAY_EVENT = "hospital.stay-event.v1"


def org(hsa_id: str, **kw) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, hsa_id, subject='on-call', **kw)}"}


OPS = org(OPERATOR, operator=True)
NOT_OPERATORS = {
    "hospital": org(HOSPITAL),
    "unit": org(UNIT),
    "person": {"Authorization": f"Bearer {mint_person_token(TEST_JWT_SECRET, PNR_A)}"},
}


def directory_file(tmp: Path, *, without: str | None = None) -> str:
    data = yaml.safe_load((REPO / "config/directory.yaml").read_text())
    data["organisations"] = [o for o in data["organisations"] if o["hsa_id"] != without]
    data["organisations"].append({"hsa_id": OPERATOR, "name": "Drift", "kind": "other", "channels": []})
    path = tmp / f"directory-{without or 'full'}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return str(path)


def hl7(trigger: str, control_id: str, pnr: str, visit: str) -> bytes:
    raw = adt_bytes(
        trigger, control_id=control_id, kommun="0180", visit=visit,
        pid3=f"{pnr}^^^SKV&1.2.752.129.2.1.3.1&ISO^PN",
    )  # fmt: skip
    return raw.replace(b"SE2321000131-E000000000111", UNIT.encode())


class Planning:
    """One planning app over the test's data directory (a second one over the same directory is the
    service restarted, e.g. with a fixed directory)."""

    def __init__(self, data_dir: Path, directory_path: str) -> None:
        settings = PlanningSettings(
            data_dir=str(data_dir), directory_path=directory_path, auth_required=True,
            jwt_hs256_secret=TEST_JWT_SECRET,
        )  # fmt: skip
        self.app = create_app(settings)
        self.rt = self.app.state.runtime
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://planning")
        self.delivered = 0

    async def __aenter__(self) -> Planning:
        await self.rt.prepare_database()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.rt.engine.dispose()

    async def receive(self, raw: bytes) -> bytes:
        return await self.app.state.intake.handle_hl7(raw)

    async def deliver(self) -> list[Exception]:
        """Hand every new stay event in the outbox to the subscriber's handler, as the broker would;
        the permanent errors it raised (dead-lettered by the broker)."""
        outbox = self.rt.outbox
        q = sa.select(outbox.c.id, outbox.c.body).where(
            outbox.c.id > self.delivered, outbox.c.routing_key == STAY_EVENT
        )
        async with self.rt.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(outbox.c.id))).all()
        errors: list[Exception] = []
        for row in rows:
            self.delivered = max(self.delivered, row.id)
            try:
                await self.app.state.handle_stay_message(HospitalStayEvent.model_validate_json(row.body))
            except PermanentError as exc:
                errors.append(exc)
        return errors

    async def outbox_max(self) -> int:
        async with self.rt.engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(self.rt.outbox.c.id), 0))))

    async def outbox_since(self, since: int, routing_key: str) -> list[dict]:
        outbox = self.rt.outbox
        q = sa.select(outbox.c.body).where(outbox.c.id > since, outbox.c.routing_key == routing_key)
        async with self.rt.engine.connect() as conn:
            return [json.loads(b) for b in (await conn.execute(q.order_by(outbox.c.id))).scalars()]

    async def count(self, table: str) -> int:
        async with self.rt.engine.connect() as conn:
            return int(await conn.scalar(sa.text(f"SELECT count(*) FROM {table}")))

    async def messages(self, **params) -> list[dict]:
        r = await self.http.get("/messages", params=params, headers=OPS)
        assert r.status_code == 200, r.text
        return r.json()["items"]


@pytest.fixture
async def planning(tmp_path):
    async with Planning(tmp_path, directory_file(tmp_path)) as p:
        yield p


async def seed(p: Planning) -> dict[str, bytes]:
    """Four messages: A01 and A03 for one person, an A03 for another, and a refused one (no PID)."""
    acks = {
        "A1": await p.receive(hl7("A01", "A1", PNR_A, "V1")),
        "A3": await p.receive(hl7("A03", "A3", PNR_A, "V1")),
        "B3": await p.receive(hl7("A03", "B3", PNR_B, "V2")),
        "BAD": await p.receive(hl7("A03", "BAD", PNR_B, "V3").replace(b"\rPID|", b"\rXXX|")),
    }
    assert await p.deliver() == []
    return acks


async def test_search_by_each_field_newest_first_without_content_or_person(planning):
    acks = await seed(planning)
    assert b"MSA|AA|A1" in acks["A1"] and b"MSA|A" in acks["BAD"]
    every = await planning.messages()
    assert [m["control_id"] for m in every] == ["BAD", "B3", "A3", "A1"]
    text = json.dumps(every)
    assert PNR_A not in text and PNR_B not in text and "raw" not in every[0]
    by_control = {m["control_id"]: m for m in every}
    assert by_control["BAD"]["status"] == "refused" and by_control["BAD"]["reason"]
    assert by_control["A3"]["status"] == "effected" and by_control["A3"]["case_id"]
    assert (
        by_control["B3"]["status"] == "effected"
        and by_control["B3"]["case_id"] != by_control["A3"]["case_id"]
    )

    assert [m["control_id"] for m in await planning.messages(status="refused")] == ["BAD"]
    assert {m["control_id"] for m in await planning.messages(status="effected")} == {"A3", "B3"}
    assert [m["control_id"] for m in await planning.messages(control_id="A3")] == ["A3"]
    a3 = by_control["A3"]
    assert [m["id"] for m in await planning.messages(correlation_id=a3["correlation_id"])] == [a3["id"]]
    assert [m["control_id"] for m in await planning.messages(type="ADT^A01")] == ["A1"]
    sender = a3["sender"]
    assert sender and len(await planning.messages(sender=sender)) == 4
    assert await planning.messages(sender="someone-else") == []
    # time range: since is inclusive, until exclusive
    since = by_control["B3"]["received_at"]
    expected = {c for c, m in by_control.items() if m["received_at"] >= since}
    assert {m["control_id"] for m in await planning.messages(since=since)} == expected >= {"BAD", "B3"}
    until = {c for c, m in by_control.items() if m["received_at"] < since}
    assert {m["control_id"] for m in await planning.messages(until=since)} == until
    later = (datetime.fromisoformat(every[0]["received_at"]) + timedelta(seconds=1)).isoformat()
    assert await planning.messages(since=later) == []
    assert len(await planning.messages(until=later)) == 4

    # keyset paging: newest first, no repeats, no gaps
    r = await planning.http.get("/messages", params={"limit": 3}, headers=OPS)
    page1 = r.json()
    assert [m["control_id"] for m in page1["items"]] == ["BAD", "B3", "A3"] and page1["next_cursor"]
    r = await planning.http.get("/messages", params={"limit": 3, "cursor": page1["next_cursor"]}, headers=OPS)
    assert [m["control_id"] for m in r.json()["items"]] == ["A1"] and r.json()["next_cursor"] is None
    # bad input: a clear 4xx
    assert (await planning.http.get("/messages", params={"status": "nope"}, headers=OPS)).status_code == 422
    assert (await planning.http.get("/messages", params={"cursor": "x;1"}, headers=OPS)).status_code == 400
    assert (await planning.http.get("/messages/999999", headers=OPS)).status_code == 404
    assert (await planning.http.get("/messages/99999999999", headers=OPS)).status_code == 422
    too_far = {"cursor": "9999999999"}  # past the 32-bit id column: a clear 400, not a database error
    assert (await planning.http.get("/messages", params=too_far, headers=OPS)).status_code == 400


async def test_patient_search_and_raw_view_are_audited(planning):
    await seed(planning)
    mark = await planning.outbox_max()
    r = await planning.http.post("/messages/search", json={"patient": PNR_A}, headers=OPS)
    assert r.status_code == 200, r.text
    assert [m["control_id"] for m in r.json()["items"]] == ["A3", "A1"]
    # the refused message has no PID: it names nobody
    r = await planning.http.post("/messages/search", json={"patient": PNR_B, "limit": 1}, headers=OPS)
    assert [m["control_id"] for m in r.json()["items"]] == ["B3"] and r.json()["next_cursor"]
    assert (
        await planning.http.post("/messages/search", json={"patient": "12"}, headers=OPS)
    ).status_code == 422

    a3 = (await planning.messages(control_id="A3"))[0]
    r = await planning.http.get(f"/messages/{a3['id']}/raw", headers=OPS)
    assert r.status_code == 200 and r.content.startswith(b"MSH|") and b"A3" in r.content
    detail = (await planning.http.get(f"/messages/{a3['id']}", headers=OPS)).json()
    assert detail["patient"] == PNR_A[:4] + "********" and detail["effect"]["case_id"] == a3["case_id"]

    recorded = await planning.outbox_since(mark, "consent.access-recorded.v1")
    assert [(x["action"], x["patient_identifier"], x["reader_kind"], x["basis"]) for x in recorded] == [
        ("search", PNR_A, "operator", "operator"),
        ("search", PNR_B, "operator", "operator"),
        ("read", PNR_A, "operator", "operator"),
    ]
    assert recorded[2]["what"] == f"IntakeMessage/{a3['id']}/raw" and recorded[0]["reader_hsa_id"] == OPERATOR
    async with planning.rt.engine.connect() as conn:
        views = (
            await conn.execute(sa.text("SELECT kind, message_id, viewer_hsa_id FROM message_views"))
        ).all()
    assert sorted(tuple(v) for v in views) == sorted(
        [("patient-search", None, OPERATOR), ("patient-search", None, OPERATOR), ("raw", a3["id"], OPERATOR)]
    )


async def test_non_operators_are_refused_everywhere(planning):
    await seed(planning)
    a3 = (await planning.messages(control_id="A3"))[0]
    mark, views = await planning.outbox_max(), await planning.count("message_views")
    for who, headers in NOT_OPERATORS.items():
        http = planning.http
        for r in (
            await http.get("/messages", headers=headers),
            await http.post("/messages/search", json={"patient": PNR_A}, headers=headers),
            await http.get(f"/messages/{a3['id']}", headers=headers),
            await http.get(f"/messages/{a3['id']}/raw", headers=headers),
            await http.post(f"/messages/{a3['id']}/replay", headers=headers),
        ):
            assert r.status_code == 403, (who, r.request.url, r.status_code)
            assert PNR_A not in r.text
    assert (await planning.http.get("/messages")).status_code == 401
    assert await planning.outbox_since(mark, "consent.access-recorded.v1") == []
    assert await planning.count("message_views") == views


async def test_replay_after_a_fix_effects_exactly_once_and_an_effected_one_changes_nothing(tmp_path):
    # the directory lacks the primary-care unit: the discharge is dead-lettered with the reason
    async with Planning(tmp_path, directory_file(tmp_path, without=UNIT)) as broken:
        assert b"MSA|AA|D1" in await broken.receive(hl7("A03", "D1", PNR_A, "V9"))
        errors = await broken.deliver()
        assert len(errors) == 1 and UNIT in str(errors[0])
        [original] = await broken.messages(control_id="D1")
        assert original["status"] == "dead-lettered" and UNIT in original["reason"]
        assert original["case_id"] is None
        assert await broken.count("sip_cases") == 0

    # the directory fixed (the service restarted with it): the replay opens the missing case
    async with Planning(tmp_path, directory_file(tmp_path)) as fixed:
        fixed.delivered = await fixed.outbox_max()
        r = await fixed.http.post(f"/messages/{original['id']}/replay", headers=OPS)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["replayed"] is True and body["original"] == original["id"]
        replay = body["replay"]
        assert replay["replay_of"] == original["id"] and replay["control_id"] == "D1~replay1"
        assert replay["correlation_id"] != original["correlation_id"]
        # a second replay while the first is under way changes nothing
        again = (await fixed.http.post(f"/messages/{original['id']}/replay", headers=OPS)).json()
        assert again["replayed"] is False and "under way" in again["reason"]
        assert await fixed.deliver() == []
        assert await fixed.count("sip_cases") == 1
        [done] = await fixed.messages(control_id="D1~replay1")
        assert done["status"] == "effected" and done["case_id"]
        detail = (await fixed.http.get(f"/messages/{original['id']}", headers=OPS)).json()
        assert [x["id"] for x in detail["replays"]] == [replay["id"]]
        lineage = (await fixed.http.get(f"/messages/{replay['id']}", headers=OPS)).json()
        assert lineage["original"]["id"] == original["id"]

        # replaying again — the original or the replay — changes nothing: no second case, nothing sent
        mark, rows = await fixed.outbox_max(), await fixed.count("intake_messages")
        for target in (original["id"], replay["id"]):
            r = await fixed.http.post(f"/messages/{target}/replay", headers=OPS)
            assert r.status_code == 200 and r.json()["replayed"] is False
            assert "already effected" in r.json()["reason"]
        assert await fixed.outbox_max() == mark and await fixed.count("intake_messages") == rows
        assert await fixed.deliver() == [] and await fixed.count("sip_cases") == 1

        # a message effected the first time: its replay changes nothing either
        await fixed.receive(hl7("A03", "E1", PNR_B, "V8"))
        assert await fixed.deliver() == []
        [e1] = await fixed.messages(control_id="E1")
        assert e1["status"] == "effected"
        mark = await fixed.outbox_max()
        r = await fixed.http.post(f"/messages/{e1['id']}/replay", headers=OPS)
        assert r.json()["replayed"] is False and await fixed.outbox_max() == mark
        assert await fixed.count("sip_cases") == 2


async def test_sipctl_messages_search_show_replay_over_http(planning, capsys, monkeypatch):
    """sipctl against the planning API served over a real socket (uvicorn), with an operator's token."""
    import argparse
    import asyncio
    import socket

    import uvicorn

    from sipctl import messages as cli

    await seed(planning)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(planning.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("SIPCTL_TOKEN", OPS["Authorization"].removeprefix("Bearer "))

    def sipctl(*argv: str) -> tuple[int, str]:
        sub = argparse.ArgumentParser().add_subparsers()
        cli.add_parser(sub, lambda a: 0)
        args = sub.choices["messages"].parse_args(list(argv))
        rc = cli.run(args, base, cli.operator_headers(lambda: {}))
        return rc, capsys.readouterr().out

    try:
        rc, out = await asyncio.to_thread(sipctl, "search", "--status", "effected")
        assert rc == 0 and "ctl=B3" in out and "ctl=A3" in out and "ctl=A1" not in out
        assert PNR_A not in out and PNR_B not in out
        rc, out = await asyncio.to_thread(sipctl, "search", "--patient", PNR_A, "--json")
        assert rc == 0 and [json.loads(x)["control_id"] for x in out.splitlines()] == ["A3", "A1"]
        a3 = (await planning.messages(control_id="A3"))[0]
        rc, out = await asyncio.to_thread(sipctl, "show", str(a3["id"]))
        assert rc == 0 and json.loads(out)["effect"]["case_id"] == a3["case_id"]
        rc, out = await asyncio.to_thread(sipctl, "show", str(a3["id"]), "--raw")
        assert rc == 0 and out.startswith("MSH|") and "PV1|" in out
        rc, out = await asyncio.to_thread(sipctl, "replay", str(a3["id"]))
        assert rc == 0 and out.startswith("not replayed: already effected")
        monkeypatch.setenv("SIPCTL_TOKEN", NOT_OPERATORS["unit"]["Authorization"].removeprefix("Bearer "))
        rc, _ = await asyncio.to_thread(sipctl, "search")
        assert rc == 1
    finally:
        server.should_exit = True
        await task
    # the patient search and the raw view went to the audit trail
    async with planning.rt.engine.connect() as conn:
        kinds = sorted((await conn.execute(sa.text("SELECT kind FROM message_views"))).scalars())
    assert kinds == ["patient-search", "raw"]


async def test_an_amqp_discharge_notice_is_stored_dead_lettered_then_effected_once(tmp_path):
    """The AMQP JSON path: the notice is a stored message; refused for a unit missing from the directory
    (dead-lettered), redelivered from its dead-letter queue after the fix it finds its row and effects
    it once; a replay afterwards changes nothing."""
    from shared.contracts import DischargeNotified

    notice = DischargeNotified(
        episode_id="AMQP-1", hospital_hsa_id=HOSPITAL, correlation_id="corr-amqp-1",
        patient={"identifier": PNR_A, "kommun_code": "0180", "primary_care_unit_hsa_id": UNIT},
        ready_for_discharge_at=datetime(2026, 12, 4, 2, 10, tzinfo=UTC), needs_kommun_support=True,
        needs_region_support=True,
    )  # fmt: skip
    async with Planning(tmp_path, directory_file(tmp_path, without=UNIT)) as broken:
        with pytest.raises(PermanentError):
            await broken.app.state.handle_discharge_message(notice)
        [row] = await broken.messages(type="hospital.discharge.v1")
        assert row["source"] == "amqp" and row["control_id"] == str(notice.message_id)
        assert row["status"] == "dead-lettered" and UNIT in row["reason"] and row["sender"] == HOSPITAL
        assert await broken.count("sip_cases") == 0
    async with Planning(tmp_path, directory_file(tmp_path)) as fixed:
        await fixed.app.state.handle_discharge_message(notice)  # `sipctl dead-letters replay`
        [row] = await fixed.messages(correlation_id="corr-amqp-1")
        assert row["status"] == "effected" and row["case_id"] and await fixed.count("sip_cases") == 1
        r = await fixed.http.post("/messages/search", json={"patient": PNR_A}, headers=OPS)
        assert [m["id"] for m in r.json()["items"]] == [row["id"]]
        raw = await fixed.http.get(f"/messages/{row['id']}/raw", headers=OPS)
        assert (
            raw.headers["content-type"].startswith("application/json")
            and raw.json()["episode_id"] == "AMQP-1"
        )
        mark = await fixed.outbox_max()
        replay = (await fixed.http.post(f"/messages/{row['id']}/replay", headers=OPS)).json()
        assert replay["replayed"] is False and await fixed.outbox_max() == mark
        assert await fixed.count("sip_cases") == 1


async def test_fhir_messages_are_in_the_store_accepted_or_refused_with_the_reason(planning):
    from tests.unit.intake.messages import bad_check_digit
    from tests.unit.intake.test_fhir_messaging import _swedish_bundle

    hospital = org(HOSPITAL)
    ok = await planning.http.post("/fhir/$process-message", json=_swedish_bundle(PNR_A), headers=hospital)
    assert ok.status_code == 200, ok.text
    bad = _swedish_bundle(bad_check_digit(PNR_B))
    for entry in bad["entry"]:
        if entry["resource"]["resourceType"] == "MessageHeader":
            entry["resource"]["id"] = "refused-header-1"  # another control id than the accepted one
    refused = await planning.http.post("/fhir/$process-message", json=bad, headers=hospital)
    assert refused.status_code == 422
    await planning.deliver()
    stored = await planning.messages()
    assert [m["source"] for m in stored] == ["fhir", "fhir"]
    assert (
        stored[0]["status"] == "refused"
        and stored[0]["reason"]
        and stored[0]["control_id"] == "refused-header-1"
    )
    assert stored[1]["status"] != "refused" and stored[1]["outcome"] == "ok" and stored[1]["message_type"]
    r = await planning.http.post("/messages/search", json={"patient": PNR_A}, headers=OPS)
    assert [m["id"] for m in r.json()["items"]] == [stored[1]["id"]]
    raw = await planning.http.get(f"/messages/{stored[1]['id']}/raw", headers=OPS)
    assert raw.headers["content-type"].startswith("application/fhir+json") and raw.json()["type"] == "message"
