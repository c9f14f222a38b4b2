"""The scenario the authorization tests share: the three services as processes with authentication on
(development HS256 tokens), a directory with an operator's and a stranger's organisation added, and
three SIP cases made through the real broker — an adult's (consent granted to the participants and one
more unit, another excluded), a child's (joint custody, two guardians named) and one still waiting for
consent."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import aio_pika
import httpx
import yaml

from shared.auth import mint_person_token, mint_token
from shared.contracts import DischargeNotified
from tests.conftest import TEST_JWT_SECRET
from tests.support.infra import MailSink
from tests.support.personnummer import ADULTS, CHILD
from tests.support.suite import DIRECTORY, Suite, running_suite

OWNER, PARTICIPANT, HOSPITAL = "SE2321000016-VC001", "SE2120001-SOC0180", "SE2321000016-SJH01"
COVERED, EXCLUDED = "SE2321000016-VC002", "SE2120001-SOC0184"
OPERATOR, STRANGER, UNKNOWN = "SE2321000016-OPS01", "SE2321000016-XYZ01", "SE9999999999-NOPE1"
PERSON, OTHER_PERSON, GUARDIAN, GUARDIAN_2 = ADULTS[20], ADULTS[21], ADULTS[22], ADULTS[23]


def org_headers(hsa_id: str, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, hsa_id, subject='matrix', **kw)}"}


def person_headers(pnr: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_person_token(TEST_JWT_SECRET, pnr)}"}


@dataclass(frozen=True)
class Who:
    """One caller of the matrix and the relations it has to the scenario's adult case (the probes'
    target); listings check each caller's records over all three cases."""

    name: str
    headers: dict[str, str]
    kinds: frozenset[str]


CALLERS: tuple[Who, ...] = (
    Who("owner", org_headers(OWNER), frozenset({"owner", "participant", "covered"})),
    Who("participant", org_headers(PARTICIPANT), frozenset({"participant", "covered"})),
    Who("hospital", org_headers(HOSPITAL), frozenset({"hospital", "participant", "covered"})),
    Who("covered", org_headers(COVERED), frozenset({"covered"})),
    Who("excluded", org_headers(EXCLUDED), frozenset({"excluded"})),
    Who("operator", org_headers(OPERATOR, operator=True), frozenset({"operator"})),
    Who("person", person_headers(PERSON), frozenset({"person"})),
    # the child's guardian: towards the adult's case (every probe's target) a person with no part in it
    Who("guardian", person_headers(GUARDIAN), frozenset()),
    Who("stranger", org_headers(STRANGER), frozenset({"stranger"})),
    Who("other person", person_headers(OTHER_PERSON), frozenset()),
)


@dataclass
class Scenario:
    suite: Suite
    adult_case: str = ""
    child_case: str = ""
    pending_case: str = ""
    adult_consent: str = ""
    child_consent: str = ""
    episodes: dict[str, str] = field(default_factory=dict)

    def client(self, service: str, headers: dict[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.suite.url(service), timeout=15, headers=headers or {})

    def as_owner(self, service: str) -> httpx.Client:
        return self.client(service, org_headers(OWNER))


def wait_for(fn: Callable[[], Any], timeout: float = 45.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


async def publish(amqp_url: str, ev: DischargeNotified) -> None:
    conn = await aio_pika.connect(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(ev.exchange)
        await ex.publish(aio_pika.Message(ev.model_dump_json().encode(), message_id=str(ev.message_id),
                                          content_type="application/json"), routing_key=ev.routing_key)  # fmt: skip


def test_directory(tmp: Path) -> Path:
    """The sample directory with an operator's organisation and one that takes part in nothing."""
    data = yaml.safe_load(DIRECTORY.read_text())
    for hsa_id, name in ((OPERATOR, "Regionens integrationsdrift"), (STRANGER, "Privat vårdgivare utan del")):
        data["organisations"].append(
            {"hsa_id": hsa_id, "name": name, "kind": "other",
             "channels": [{"type": "email", "address": f"{hsa_id.lower()}@example.org"}]}
        )  # fmt: skip
    path = tmp / "directory.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@contextmanager
def authenticated_suite(amqp_url: str, tmp: Path, smtp: MailSink) -> Iterator[Suite]:
    env = {
        "SIP_AUTH_REQUIRED": "true",
        "SIP_JWT_HS256_SECRET": TEST_JWT_SECRET,
        "SIP_DIRECTORY_PATH": str(test_directory(tmp)),
    }
    with running_suite(amqp_url, tmp, smtp, extra_env=env) as suite:
        yield suite


async def discharge(suite: Suite, pnr: str) -> tuple[str, str]:
    episode = f"AZ-{uuid4().hex[:8]}"
    ev = DischargeNotified(
        episode_id=episode, hospital_hsa_id=HOSPITAL,
        patient={"identifier": pnr, "kommun_code": "0180", "primary_care_unit_hsa_id": OWNER},
        ready_for_discharge_at=datetime.now(UTC), needs_kommun_support=True, needs_region_support=True,
    )  # fmt: skip
    await publish(suite.amqp_url, ev)
    planning = httpx.Client(base_url=suite.url("planning"), timeout=10, headers=org_headers(OWNER))

    def found() -> str | None:
        cases = planning.get("/cases", params={"all": "true"}).json()
        return next((c["id"] for c in cases if c["episode_id"] == episode), None)

    return wait_for(found, what=f"the case of episode {episode}"), episode


def record_consent(sc: Scenario, body: dict[str, Any]) -> str:
    r = sc.as_owner("consent").post("/consents", json=body)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def wait_state(sc: Scenario, case_id: str, state: str) -> None:
    planning = sc.as_owner("planning")
    wait_for(lambda: planning.get(f"/cases/{case_id}").json().get("state") == state, what=f"case {state}")


async def build(suite: Suite) -> Scenario:
    sc = Scenario(suite)
    sc.adult_case, sc.episodes["adult"] = await discharge(suite, PERSON)
    sc.child_case, sc.episodes["child"] = await discharge(suite, CHILD)
    sc.pending_case, sc.episodes["pending"] = await discharge(suite, OTHER_PERSON)
    sc.adult_consent = record_consent(sc, {
        "case_id": sc.adult_case, "patient_identifier": PERSON, "decision": "granted",
        "recipients": [OWNER, PARTICIPANT, HOSPITAL, COVERED], "excluded_organisations": [EXCLUDED],
    })  # fmt: skip
    sc.child_consent = record_consent(sc, {
        "case_id": sc.child_case, "patient_identifier": CHILD, "decision": "granted", "given_by": "guardians",
        "recipients": [OWNER, PARTICIPANT, HOSPITAL], "custody": "joint", "child_view": "agrees",
        "guardians": [{"stance": "consents", "identifier": GUARDIAN},
                      {"stance": "consents", "identifier": GUARDIAN_2}],
    })  # fmt: skip
    wait_state(sc, sc.adult_case, "invited")
    wait_state(sc, sc.child_case, "invited")
    notify = sc.as_owner("notify")
    for case in (sc.adult_case, sc.child_case):
        wait_for(
            lambda c=case: len(notify.get("/notifications", params={"case_id": c}).json()) >= 3,
            what="the invitations recorded in notify",
        )
    return sc


def dump(obj: Any) -> str:
    return json.dumps(sorted(obj) if isinstance(obj, set) else obj, ensure_ascii=False)[:400]
