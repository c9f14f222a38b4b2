"""The compose broker's least-privilege users, on the machine's real RabbitMQ.

deploy/rabbitmq/entrypoint.sh renders deploy/rabbitmq/definitions.json with password hashes from the
environment (as in the container); the result is imported into a fresh ``t-`` vhost with its users
renamed ``t-<id>-<service>`` (the regexes, queues, exchanges and bindings are imported unchanged) —
or, for ``empty_broker``, the users and permissions only, with no topology at all.
Then each service runs in-process as its own user, declaring only its own part of the topology: a
discharge goes through planning → consent → planning → notify (e-mail) → planning, a bad one is
dead-lettered, planning asks the consent gate over request/reply — all of it with only the
definitions' permissions, on the pre-created topology and on an empty vhost in every start order.
And what a service must not do — delete, purge, consume, bind or create another service's queue — is
refused by the broker (ACCESS_REFUSED).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import aiormq
import httpx
import pytest

from services.consent.app import create_app as create_consent
from services.consent.settings import ConsentSettings
from services.notify.app import create_app as create_notify
from services.notify.settings import NotifySettings
from services.planning.app import create_app as create_planning
from services.planning.settings import PlanningSettings
from shared.consent_gate import ConsentGateClient
from shared.contracts import DischargeNotified, PatientRef
from shared.topology import SUBSCRIPTIONS, binds_from, dead_letter_exchange_name, exchanges_of
from tests.support.infra import RABBIT_HOST, REPO, MailSink, ensure_rabbit
from tests.support.personnummer import ADULTS

pytestmark = pytest.mark.broker

DEPLOY = REPO / "deploy" / "rabbitmq"
SERVICES = ("planning", "consent", "notify")
DIRECTORY = str(REPO / "config" / "directory.yaml")


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def import_definitions(defs: dict) -> None:
    # rabbitmqctl runs as the rabbitmq user, which can read neither pytest's tmp_path nor (3.10) stdin
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="t-defs-") as f:
        json.dump(defs, f)
        f.flush()
        os.chmod(f.name, 0o644)  # test users' password hashes only, and gone when the import is done
        _ctl("import_definitions", f.name)


@dataclass
class Broker:
    vhost: str
    users: dict[str, str]  # service -> broker user name
    passwords: dict[str, str]
    definitions: dict

    def url(self, service: str) -> str:
        return f"amqp://{self.users[service]}:{self.passwords[service]}@{RABBIT_HOST}:5672/{self.vhost}"

    @property
    def operator_url(self) -> str:
        """The machine's guest, standing in for the hospital integration and the operator."""
        return f"amqp://guest:guest@{RABBIT_HOST}:5672/{self.vhost}"


def render_definitions(tmp: Path, passwords: dict[str, str]) -> dict:
    """Run the container's entrypoint in render-only mode, as the container would."""
    out = tmp / "rendered" / "definitions.json"
    env = {
        "PATH": os.environ["PATH"],
        "SIP_DEFINITIONS_TEMPLATE": str(DEPLOY / "definitions.json"),
        "SIP_DEFINITIONS_OUT": str(out),
        "RABBITMQ_ADMIN_USER": "operator",
        "RABBITMQ_ADMIN_PASSWORD": secrets.token_hex(16),
        **{f"RABBITMQ_{s.upper()}_PASSWORD": passwords[s] for s in SERVICES},
    }
    subprocess.run(
        ["sh", str(DEPLOY / "entrypoint.sh")], env=env, check=True, capture_output=True, timeout=30
    )
    text = out.read_text()
    assert not any(pw in text for pw in passwords.values()), "a plain password in the rendered file"
    return json.loads(text)


def for_test_vhost(defs: dict, vhost: str, users: dict[str, str], *, topology: bool = True) -> dict:
    """The rendered definitions moved to ``vhost`` with the service users renamed; no operator user
    (the test uses the machine's guest for that role). ``topology=False``: no exchange, queue or
    binding either — the services must create what they need themselves."""
    moved = {
        "users": [{**u, "name": users[u["name"]]} for u in defs["users"] if u["name"] in users],
        "vhosts": [{"name": vhost}],
        "permissions": [
            {**p, "user": users[p["user"]], "vhost": vhost} for p in defs["permissions"] if p["user"] in users
        ],
    }
    for key in ("queues", "exchanges", "bindings", "policies"):
        moved[key] = [{**item, "vhost": vhost} for item in defs[key]] if topology else []
    return moved


@contextmanager
def _vhost_from_definitions(tmp_path: Path, *, topology: bool) -> Iterator[Broker]:
    ensure_rabbit()
    tag = uuid.uuid4().hex[:10]
    vhost = f"t-{tag}"
    users = {s: f"t-{tag}-{s}" for s in SERVICES}
    passwords = {s: secrets.token_hex(16) for s in SERVICES}
    defs = render_definitions(tmp_path, passwords)
    moved = for_test_vhost(defs, vhost, users, topology=topology)
    # the machine's guest, the operator's stand-in, gets everything on the test's vhost (one import)
    moved["permissions"].append(
        {"user": "guest", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
    )
    try:
        import_definitions(moved)
        yield Broker(vhost, users, passwords, defs)
    finally:
        ensure_rabbit()
        # one rabbitmqctl (an Erlang VM start) instead of one per vhost and user
        gone = ", ".join(
            [f'rabbit_vhost:delete(<<"{vhost}">>, <<"tests">>)']
            + [f'rabbit_auth_backend_internal:delete_user(<<"{u}">>, <<"tests">>)' for u in users.values()]
        )
        r = subprocess.run(["rabbitmqctl", "-q", "eval", gone + ", done."], capture_output=True, timeout=60)
        if b"done" not in r.stdout:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)
            for user in users.values():
                subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """The definitions as deployed: users, permissions and the whole topology."""
    with _vhost_from_definitions(tmp_path, topology=True) as b:
        yield b


@pytest.fixture
def empty_broker(tmp_path: Path) -> Iterator[Broker]:
    """Users and permissions only: not one exchange or queue."""
    with _vhost_from_definitions(tmp_path, topology=False) as b:
        assert not rabbit_names(b.vhost, "queues") and not rabbit_names(b.vhost, "exchanges")
        yield b


def rabbit_names(vhost: str, kind: str) -> set[str]:
    """The queues or (non-``amq.``, non-default) exchanges of ``vhost``."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", f"list_{kind}", "-p", vhost, "name", "--formatter", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {i["name"] for i in json.loads(out) if i["name"] and not i["name"].startswith("amq.")}


@pytest.mark.store_free
def test_imported_permissions_are_the_definitions(broker: Broker):
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_permissions", "-p", broker.vhost, "--formatter", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    got = {p["user"]: (p["configure"], p["write"], p["read"]) for p in json.loads(out)}
    for p in broker.definitions["permissions"]:
        if p["user"] in SERVICES:
            assert got[broker.users[p["user"]]] == (p["configure"], p["write"], p["read"])


def discharge(pnr: str) -> DischargeNotified:
    return DischargeNotified(
        episode_id=f"V-{uuid.uuid4().hex[:8]}",
        hospital_hsa_id="SE2321000016-SJH01",
        patient=PatientRef(identifier=pnr, kommun_code="0180", primary_care_unit_hsa_id="SE2321000016-VC001"),
        ready_for_discharge_at=datetime.now(UTC),
        needs_kommun_support=True,
        needs_region_support=True,
    )


async def publish_discharge(url: str, body: bytes, message_id: str) -> None:
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        ex = await ch.get_exchange("hospital.events", ensure=False)
        msg = aio_pika.Message(body, message_id=message_id, content_type="application/json")
        await ex.publish(msg, routing_key="hospital.discharge.v1", mandatory=True)


async def poll(fn, what: str, timeout: float = 30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


ORDERS = list(itertools.permutations(SERVICES))


@pytest.mark.parametrize(
    "order", [("consent", "planning", "notify"), ("notify", "planning", "consent")], ids="-".join
)
async def test_each_service_runs_with_only_its_own_permissions(
    broker: Broker, tmp_path: Path, smtp: MailSink, order: tuple[str, ...]
):
    """On the deployed definitions (topology pre-created), as its own user."""
    await run_the_suite(broker, tmp_path, smtp, order)


@pytest.mark.parametrize("order", ORDERS, ids="-".join)
async def test_each_service_starts_in_any_order_on_an_empty_vhost(
    empty_broker: Broker, tmp_path: Path, smtp: MailSink, order: tuple[str, ...]
):
    """Nothing pre-created: whichever service is first creates what it needs as its own user (the
    exchanges it uses, its own queues), and the flow completes. A discharge is published as soon as
    planning is up, so when planning starts before consent its consent request waits in planning's
    outbox (unroutable, retried) until consent has declared its queue."""
    await run_the_suite(empty_broker, tmp_path, smtp, order)
    # every service declared its own part; together that is the whole topology of the definitions
    # (+ the consent gate's decision queue, which only consent declares)
    assert rabbit_names(empty_broker.vhost, "queues") == {
        q["name"] for q in empty_broker.definitions["queues"]
    } | {"consent.consent.decide.v1"}
    assert rabbit_names(empty_broker.vhost, "exchanges") == {
        e["name"] for e in empty_broker.definitions["exchanges"]
    }


async def run_the_suite(broker: Broker, tmp_path: Path, smtp: MailSink, order: tuple[str, ...]) -> None:
    """Start the services one by one in ``order``, each as its own broker user, and run a discharge
    (and a bad one) through all of them, then ask the consent gate as planning."""
    apps = {
        "consent": create_consent(ConsentSettings(amqp_url=broker.url("consent"), data_dir=str(tmp_path))),
        "planning": create_planning(
            PlanningSettings(
                amqp_url=broker.url("planning"), data_dir=str(tmp_path), directory_path=DIRECTORY
            )
        ),
        "notify": create_notify(
            NotifySettings(
                amqp_url=broker.url("notify"),
                data_dir=str(tmp_path),
                directory_path=DIRECTORY,
                smtp_port=smtp.smtp_port,
            )
        ),
    }
    started = []
    pnr = ADULTS[11]
    try:
        for name in order:  # each declares its own part of the topology as its own user
            await apps[name].state.runtime.start()
            started.append(apps[name].state.runtime)
            if name != "planning":
                continue
            # planning's queues exist from here on: the hospital's discharges are queued
            bad = json.loads(discharge(pnr).model_dump_json())
            bad["patient"]["kommun_code"] = "9999"  # unknown kommun: dead-lettered via planning.dlx
            await publish_discharge(broker.operator_url, json.dumps(bad).encode(), "bad-kommun")
            good = discharge(pnr)
            await publish_discharge(
                broker.operator_url, good.model_dump_json().encode(), str(good.message_id)
            )

        # the unit that owns the case acts (the sandbox's X-Sip-Organisation: authentication is off here)
        owner = {"X-Sip-Organisation": "SE2321000016-VC001"}
        http = {
            n: httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t", headers=owner)
            for n, app in apps.items()
        }

        async def pending():
            items = (await http["consent"].get("/consent-requests")).json()
            return items[0]["case_id"] if items else None

        case_id = await poll(pending, "consent's work list to show planning's consent request")
        r = await http["consent"].post(
            "/consents",
            json={
                "case_id": case_id,
                "patient_identifier": pnr,
                "decision": "granted",
                "method": "oral",
                "recorded_by_hsa_id": "SE2321000016-VC001",
            },
        )
        assert r.status_code == 201, r.text

        async def invited():
            case = (await http["planning"].get(f"/cases/{case_id}")).json()
            return case if case.get("state") == "invited" else None

        # consent.granted → planning → notify.send-invitation → notify (SMTP) → notify.invitation-sent
        await poll(invited, "the case to reach 'invited'", timeout=45)
        assert smtp.wait_for(1, timeout=10), "no invitation e-mail"

        # planning asks the consent gate over request/reply (direct reply-to) as its own user
        async with ConsentGateClient(amqp_url=broker.url("planning"), timeout=10) as gate:
            reply = await gate.decide(
                patient_identifier=pnr,
                recipient_hsa_id="SE2120001-SOC0180",
                category="sip-plan",
                purpose="share-information",
                requested_by="planning",
            )
        assert reply.decision in ("permit", "deny") and reply.audit_event_id is not None

        async with await aio_pika.connect(broker.operator_url) as conn:
            ch = await conn.channel()
            dlq = await ch.declare_queue("planning.hospital.discharge.v1.dlq", passive=True)
            dead = await poll(lambda: dlq.get(fail=False), "the bad discharge in planning's DLQ")
            assert dead.message_id == "bad-kommun" and "9999" in dead.headers["x-sip-error"]
        for client in http.values():
            await client.aclose()
    finally:
        for rt in reversed(started):
            await rt.stop()


async def refused(url: str, action, resource: str) -> None:
    """``action(channel)``, run as the user of ``url``, is refused by the broker for ``resource``."""
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel(publisher_confirms=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as err:
            await action(ch)
    text = str(err.value)
    assert "ACCESS_REFUSED" in text and f"'{resource}'" in text, text


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    pass


@pytest.mark.store_free
async def test_a_service_user_cannot_touch_what_is_not_its_own(broker: Broker):
    notify, planning, consent = broker.url("notify"), broker.url("planning"), broker.url("consent")

    async def consume(url: str, name: str) -> None:
        async def action(ch):
            q = await ch.get_queue(name, ensure=False)
            await q.consume(_ignore)

        await refused(url, action, name)

    # notify may not read planning's work queue, nor a DLQ (its own included: the operator reads those)
    await consume(notify, "planning.hospital.discharge.v1")
    await consume(notify, "notify.notify.send-invitation.v1.dlq")
    await consume(planning, "consent.consent.decide.v1")
    await consume(consent, "planning.consent.granted.v1.retry")

    # nor create names outside the suite
    async def declare_evil(ch):
        await ch.declare_queue("evil.queue", durable=True)

    await refused(planning, declare_evil, "evil.queue")

    # nor publish where another service publishes: notify sending consent commands or planning events
    async def publish(url: str, exchange: str, key: str) -> None:
        async def action(ch):
            ex = await ch.get_exchange(exchange, ensure=False)
            await ex.publish(aio_pika.Message(b"{}"), routing_key=key)

        await refused(url, action, exchange)

    await publish(notify, "consent.commands", "consent.record.v1")
    await publish(consent, "planning.events", "planning.deadline-breached.v1")
    await publish(notify, "planning.dlx", "hospital.discharge.v1")

    # while its own work queue is readable
    async with await aio_pika.connect(notify) as conn:
        ch = await conn.channel()
        q = await ch.get_queue("notify.notify.send-invitation.v1", ensure=False)
        tag = await q.consume(_ignore)
        await q.cancel(tag)


@pytest.mark.store_free
@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_user_cannot_delete_purge_consume_or_bind_another_services_queues(
    broker: Broker, service: str
):
    """Every queue of every other service (work, retry, dead-letter): deleting, purging, consuming,
    getting, redeclaring, binding and unbinding it is refused; and so is deleting an exchange the
    service does not use or another service's dead-letter exchange. Nothing is lost meanwhile."""
    others = [s for s in SUBSCRIPTIONS if s.consumer != service]
    arguments = {q["name"]: q["arguments"] for q in broker.definitions["queues"]}
    seeded = [n for s in others for n in (s.queue_name, s.dlq_name)]  # retry queues expire their messages
    async with await aio_pika.connect(broker.operator_url) as conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        for name in seeded:
            await ch.default_exchange.publish(aio_pika.Message(b"{}", message_id=name), name, mandatory=True)

    own_dlx = dead_letter_exchange_name(service)
    readable_exchange = binds_from(service)[0]  # so a refused bind is about the queue, not the exchange
    attempts = 0
    async with await aio_pika.connect(broker.url(service)) as conn:

        async def refused_on(resource: str, action) -> None:
            nonlocal attempts
            ch = await conn.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as err:
                await action(ch)
            text = str(err.value)
            assert "ACCESS_REFUSED" in text and f"'{resource}'" in text, (service, resource, text)
            attempts += 1

        for sub in others:
            for name in (sub.queue_name, sub.retry_queue_name, sub.dlq_name):

                async def delete(ch, name=name):
                    await ch.queue_delete(name)

                async def purge(ch, name=name):
                    await (await ch.get_queue(name, ensure=False)).purge()

                async def consume(ch, name=name):
                    await (await ch.get_queue(name, ensure=False)).consume(_ignore)

                async def get(ch, name=name):
                    await (await ch.get_queue(name, ensure=False)).get(fail=False)

                async def redeclare(ch, name=name):
                    await ch.declare_queue(name, durable=True, arguments=arguments[name])

                async def bind(ch, name=name, source=readable_exchange):
                    await (await ch.get_queue(name, ensure=False)).bind(source, routing_key="#")

                async def bind_to_own_dlx(ch, name=name, key=sub.contract.routing_key):
                    await (await ch.get_queue(name, ensure=False)).bind(own_dlx, routing_key=key)

                for action in (delete, purge, consume, get, redeclare, bind, bind_to_own_dlx):
                    await refused_on(name, action)

            async def unbind(ch, sub=sub):  # take another service's queue off its exchange
                q = await ch.get_queue(sub.queue_name, ensure=False)
                await q.unbind(sub.contract.exchange, routing_key=sub.contract.routing_key)

            await refused_on(sub.queue_name, unbind)

        untouchable = {e["name"] for e in broker.definitions["exchanges"]} - {*exchanges_of(service), own_dlx}
        assert {dead_letter_exchange_name(o) for o in SERVICES if o != service} <= untouchable
        for exchange in sorted(untouchable):

            async def delete_exchange(ch, exchange=exchange):
                await ch.exchange_delete(exchange)

            await refused_on(exchange, delete_exchange)
    assert attempts >= 8 * len(others)

    # nothing was deleted, purged or taken: each seeded message is still there
    async with await aio_pika.connect(broker.operator_url) as conn:
        ch = await conn.channel()
        for name in seeded:
            q = await ch.declare_queue(name, passive=True)
            assert q.declaration_result.message_count == 1, name
        assert rabbit_names(broker.vhost, "exchanges") == {e["name"] for e in broker.definitions["exchanges"]}


@pytest.mark.store_free
@pytest.mark.parametrize("service", SERVICES)
async def test_on_an_empty_vhost_a_service_user_cannot_create_another_services_queues(
    empty_broker: Broker, service: str
):
    arguments = {q["name"]: q["arguments"] for q in empty_broker.definitions["queues"]}
    async with await aio_pika.connect(empty_broker.url(service)) as conn:
        for sub in SUBSCRIPTIONS:
            if sub.consumer == service:
                continue
            for name in (sub.queue_name, sub.retry_queue_name, sub.dlq_name):
                ch = await conn.channel()
                with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as err:
                    await ch.declare_queue(name, durable=True, arguments=arguments[name])
                assert f"'{name}'" in str(err.value)
    assert not rabbit_names(empty_broker.vhost, "queues")
