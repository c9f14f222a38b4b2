"""Drive a stream of discharges through the running suite and account for every one of them.

- the *hospital* publishes discharges with publisher confirms; a publish that fails (broker down) is
  retried with the same message_id until confirmed — "accepted" means confirmed by the broker;
- a *consent desk* records consent for every case that asks for it (over RabbitMQ, one deterministic
  message_id per case, so a resend after a fault can never become a second consent);
- at the end: every accepted discharge has exactly one SIP case, every participant exactly one
  invitation (counted by Message-ID at the real SMTP server), nothing left in any DLQ unexplained.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.parser
import email.policy
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import aio_pika
import httpx

from shared.broker_urls import amqp_urls
from shared.contracts import DischargeNotified, RecordConsent
from shared.topology import SUBSCRIPTIONS
from tests.support.personnummer import ADULTS
from tests.support.suite import Suite

PARTICIPANTS_PER_CASE = 3  # social services 0180, VC001, the hospital (all in config/directory.yaml)


@dataclass
class Figures:
    sent: int = 0
    accepted: int = 0
    publish_errors: int = 0
    cases: int = 0
    invited: int = 0
    consents_sent: int = 0
    emails_received: int = 0
    unique_invitations: int = 0
    duplicate_deliveries: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0
    invited_lag: float = 0.0  # seconds from the last mail to the last case recorded as invited
    mllp_accepted: int = 0  # of the discharges sent as HL7 v2 over MLLP, those acknowledged AA
    mllp_resends: int = 0  # messages the MLLP sender sent again (no ACK: closed or timed out)
    problems: list[str] = field(default_factory=list)

    def line(self, label: str) -> str:
        return (
            f"[{label}] sent={self.sent} accepted={self.accepted} publish_errors={self.publish_errors} "
            f"cases={self.cases} invited={self.invited} consents={self.consents_sent} "
            f"emails={self.emails_received} unique_invitations={self.unique_invitations} "
            f"duplicate_deliveries(same Message-ID)={self.duplicate_deliveries} "
            f"dead_lettered={self.dead_lettered} seconds={self.seconds:.1f} invited_lag={self.invited_lag:.1f}"
            f" mllp_accepted={self.mllp_accepted} mllp_resends={self.mllp_resends}"
        )


def make_discharges(n: int, run: str) -> list[DischargeNotified]:
    now = datetime.now(UTC)
    return [
        DischargeNotified(
            episode_id=f"{run}-{i:05d}",
            hospital_hsa_id="SE2321000016-SJH01",
            patient={
                "identifier": ADULTS[i % len(ADULTS)],
                "kommun_code": "0180",
                "primary_care_unit_hsa_id": "SE2321000016-VC001",
            },
            ready_for_discharge_at=now,
            needs_kommun_support=True,
            needs_region_support=True,
            correlation_id=f"{run}-{i:05d}",
        )
        for i in range(n)
    ]


async def connect_any(amqp_url: str, timeout: float = 5) -> aio_pika.abc.AbstractConnection:
    """A plain connection to the first of the (comma-separated) broker addresses that answers."""
    error: BaseException = ConnectionError("no broker address")
    for url in amqp_urls(amqp_url):
        try:
            return await aio_pika.connect(url, timeout=timeout)
        except Exception as exc:
            error = exc
    raise error


async def _connect(url: str) -> aio_pika.abc.AbstractConnection:
    while True:
        try:
            return await connect_any(url, timeout=5)
        except Exception:
            await asyncio.sleep(0.5)


async def publish_all(
    amqp_url: str,
    events: list[DischargeNotified],
    figures: Figures,
    *,
    copies: int = 1,
    on_progress: Callable[[int], None] | None = None,
    window: int = 100,
) -> None:
    """Publish every event (``copies`` times each) until the broker confirms each one."""
    pending = [e for e in events for _ in range(copies)]
    figures.sent = len(pending)
    confirmed = 0
    while pending:
        conn = await _connect(amqp_url)
        try:
            ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
            ex = await ch.get_exchange("hospital.events")
            while pending:
                batch, pending = pending[:window], pending[window:]
                results = await asyncio.gather(
                    *(
                        ex.publish(
                            aio_pika.Message(
                                e.model_dump_json().encode(),
                                message_id=str(e.message_id),
                                correlation_id=e.correlation_id,
                                content_type="application/json",
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            ),
                            routing_key=e.routing_key,
                            mandatory=True,
                            timeout=10,
                        )
                        for e in batch
                    ),
                    return_exceptions=True,
                )
                failed = [e for e, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
                figures.publish_errors += len(failed)
                confirmed += len(batch) - len(failed)
                if on_progress:
                    on_progress(confirmed)
                if failed:
                    pending = failed + pending  # same message_id: the consumer's inbox handles doubles
                    raise ConnectionError("publish failed")
        except Exception:
            await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
    figures.accepted = len({e.message_id for e in events})


async def send_mllp(port: int, events: list[DischargeNotified], figures: Figures) -> None:
    """A hospital's interface engine: each discharge as an HL7 v2 A03 over MLLP (MSH-10 = the episode),
    one at a time on one connection; what is not acknowledged (no ACK, connection closed) is sent
    again on a new connection until an ACK comes. "Accepted" means AA."""
    from services.planning.intake.mllp import FrameDecoder, frame
    from tests.unit.intake.messages import adt_bytes, msa

    def hl7(e: DischargeNotified) -> bytes:
        pid3 = f"{e.patient.identifier}^^^SKV&1.2.752.129.2.1.3.1&ISO^PN"
        raw = adt_bytes(
            "A03", control_id=e.episode_id, pid3=pid3, visit=e.episode_id, kommun="0180",
            discharge=e.ready_for_discharge_at.strftime("%Y%m%d%H%M%S+0000"),
            evn_recorded=e.ready_for_discharge_at.strftime("%Y%m%d%H%M%S+0000"),
        )  # fmt: skip
        # the hospital (MSH-4) and primary care unit (PD1) of the JSON discharges, both in the directory
        raw = raw.replace(b"SU^1.2.752.129.2.1.4.1^ISO", b"SE2321000016-SJH01")
        return raw.replace(b"SE2321000131-E000000000111", b"SE2321000016-VC001")

    todo = list(events)
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    decoder = FrameDecoder()
    while todo:
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
                decoder = FrameDecoder()
            reader, writer = conn
            writer.write(frame(hl7(todo[0])))
            await writer.drain()
            acks: list[bytes] = []
            while not acks:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=30)
                if not chunk:
                    raise ConnectionError("closed without an ACK")
                acks = decoder.feed(chunk)
            code = msa(acks[0])[1]
            if code != "AA":
                figures.problems.append(f"MLLP answered {code} for {todo[0].episode_id}")
            else:
                figures.mllp_accepted += 1
            todo.pop(0)
        except (OSError, ConnectionError, TimeoutError):
            figures.mllp_resends += 1
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn[1].close()
            conn = None
            await asyncio.sleep(0.5)
    if conn is not None:
        conn[1].close()


async def consent_desk(suite: Suite, figures: Figures, stop: asyncio.Event) -> None:
    """Grant consent for every case that asks, once per case (deterministic message_id)."""
    done: set[str] = set()
    # the desk works for the unit that owns the cases (the sandbox's acting organisation): consent
    # lists only the requests of the caller's own cases
    async with httpx.AsyncClient(timeout=10, headers={"X-Sip-Organisation": "SE2321000016-VC001"}) as http:
        while not stop.is_set():
            try:
                answer = await http.get(f"{suite.url('consent')}/consent-requests")
                # anything but 200 (e.g. 503 while consent's database is away): ask again later
                pending = answer.json() if answer.status_code == 200 else []
            except (httpx.HTTPError, ValueError):
                pending = []
            todo = [p for p in pending if p["case_id"] not in done]
            if todo:
                # the consent desk knows the person: here, the case's personnummer from planning
                try:
                    conn = await connect_any(suite.amqp_url, timeout=5)
                    async with conn:
                        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
                        ex = await ch.get_exchange("consent.commands")
                        for p in todo:
                            case = (await http.get(f"{suite.url('planning')}/cases/{p['case_id']}")).json()
                            pnr = _personnummer_for(case["episode_id"])
                            cmd = RecordConsent(
                                message_id=uuid5(NAMESPACE_URL, f"consent:{p['case_id']}"),
                                case_id=UUID(p["case_id"]), patient_identifier=pnr, decision="granted",
                                recorded_by_hsa_id="SE2321000016-VC001", correlation_id=case["episode_id"],
                            )  # fmt: skip
                            await ex.publish(
                                aio_pika.Message(cmd.model_dump_json().encode(), message_id=str(cmd.message_id),
                                                 content_type="application/json",
                                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                routing_key=cmd.routing_key, mandatory=True, timeout=10,
                            )  # fmt: skip
                            done.add(p["case_id"])
                            figures.consents_sent += 1
                except Exception:
                    await asyncio.sleep(0.5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)


_EPISODE_PNR: dict[str, str] = {}


def _personnummer_for(episode_id: str) -> str:
    return _EPISODE_PNR[episode_id]


# (path) -> (size, mtime_ns, (subject's case reference, recipient addresses, Message-ID)): the sink writes
# each .eml once, so a stream that polls the directory every two seconds parses each mail once, not
# once per poll (with 6,000 mails the re-parsing alone used to keep a core busy)
_MAIL_HEADERS: dict[str, tuple[int, int, tuple[str, tuple[str, ...], str]]] = {}
_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.default)


class _Incomplete(Exception):
    pass


def _mail_headers(path: Path) -> tuple[str, tuple[str, ...], str]:
    st = path.stat()
    key = str(path)
    hit = _MAIL_HEADERS.get(key)
    if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    msg = _HEADER_PARSER.parsebytes(path.read_bytes())
    if msg["To"] is None or msg["Subject"] is None:
        raise _Incomplete(path)  # not whole yet (a sink writing in place): counted on a later poll
    ref = str(msg["Subject"]).rsplit(" ", 1)[-1]
    addrs = tuple(a.addr_spec for a in msg["To"].addresses)
    parsed = (ref, addrs, str(msg["Message-ID"]))
    _MAIL_HEADERS[key] = (st.st_size, st.st_mtime_ns, parsed)
    return parsed


def count_emails(suite: Suite) -> tuple[int, Counter[tuple[str, str]], Counter[tuple[str, str, str]]]:
    """(raw count, invitations per (case reference, address), deliveries per (ref, address, Message-ID))."""
    per_invitation: Counter[tuple[str, str]] = Counter()
    per_delivery: Counter[tuple[str, str, str]] = Counter()
    raw = 0
    for path in suite.smtp.directory.glob("*.eml"):
        try:
            ref, addrs, mid = _mail_headers(path)
        except _Incomplete:
            continue
        raw += 1
        for addr in addrs:
            per_delivery[(ref, addr, mid)] += 1
    for ref, addr, _mid in per_delivery:
        per_invitation[(ref, addr)] += 1
    return raw, per_invitation, per_delivery


async def dead_letter_count(amqp_url: str) -> int:
    total = 0
    conn = await connect_any(amqp_url)
    async with conn:
        for sub in SUBSCRIPTIONS:
            ch = await conn.channel()
            q = await ch.declare_queue(sub.dlq_name, passive=True)
            total += q.declaration_result.message_count or 0
            await ch.close()
    return total


async def _wait_until_invited(
    suite: Suite, http: httpx.AsyncClient, run: str, n: int, deadline: float
) -> None:
    """Return once all ``n`` cases of this run are invited, or when a minute passes without change."""
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        cases = (await http.get(f"{suite.url('planning')}/cases", params={"all": "true"})).json()
        invited = sum(1 for c in cases if c["episode_id"].startswith(f"{run}-") and c["state"] == "invited")
        if invited >= n:
            break
        if invited != last:
            last, last_change = invited, time.monotonic()
        elif time.monotonic() - last_change > 60:
            break
        await asyncio.sleep(1)


async def run_stream(
    suite: Suite,
    n: int,
    *,
    fault: Callable[[], None] | None = None,
    fault_at: float = 0.33,
    copies: int = 1,
    timeout: float = 900.0,
    label: str = "stream",
    mllp_port: int | None = None,
) -> Figures:
    """``mllp_port``: every second discharge goes as HL7 v2 A03 over MLLP instead of JSON on RabbitMQ."""
    run = uuid4().hex[:6]
    events = make_discharges(n, run)
    over_mllp = events[1::2] if mllp_port else []
    if over_mllp:
        events_json = events[0::2]
    else:
        events_json = events
    for e in events:
        _EPISODE_PNR[e.episode_id] = e.patient.identifier
    figures = Figures()
    started = time.monotonic()
    stop = asyncio.Event()
    desk = asyncio.create_task(consent_desk(suite, figures, stop))
    fault_task: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()

    def progress(confirmed: int) -> None:
        nonlocal fault_task
        if fault and fault_task is None and confirmed >= n * copies * fault_at:
            fault_task = asyncio.ensure_future(loop.run_in_executor(None, fault))

    hospital = asyncio.ensure_future(send_mllp(mllp_port, over_mllp, figures)) if over_mllp else None
    await publish_all(suite.amqp_url, events_json, figures, copies=copies, on_progress=progress)
    if hospital is not None:
        await hospital
        figures.sent += len(over_mllp)
        figures.accepted += figures.mllp_accepted
    if fault_task is not None:
        await fault_task
    expected_invitations = n * PARTICIPANTS_PER_CASE
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    async with httpx.AsyncClient(timeout=30) as http:
        while time.monotonic() < deadline:
            raw, per_inv, _ = count_emails(suite)
            if len(per_inv) >= expected_invitations:
                break
            if len(per_inv) != last:
                last, last_change = len(per_inv), time.monotonic()
            elif time.monotonic() - last_change > 60:
                break  # no progress for a minute: stop and report what is missing
            await asyncio.sleep(2)
        # the mails are out; planning records each one from notify's InvitationSent, which can trail
        # the mail by the length of planning's queue: wait until every case of this run has settled
        # (or nothing has changed for a minute), then let anything late (a duplicate) arrive
        mails_done = time.monotonic()
        await _wait_until_invited(suite, http, run, n, deadline)
        figures.invited_lag = time.monotonic() - mails_done
        await asyncio.sleep(3)
        cases = (await http.get(f"{suite.url('planning')}/cases", params={"all": "true"})).json()
    stop.set()
    await desk
    raw, per_inv, per_delivery = count_emails(suite)
    mine = [c for c in cases if c["episode_id"].startswith(f"{run}-")]
    figures.cases = len(mine)
    figures.invited = sum(1 for c in mine if c["state"] == "invited")
    figures.emails_received = raw
    figures.unique_invitations = len(per_inv)
    figures.duplicate_deliveries = sum(c - 1 for c in per_delivery.values())
    figures.dead_lettered = await dead_letter_count(suite.amqp_url)
    figures.seconds = time.monotonic() - started
    episodes = Counter(c["episode_id"] for c in mine)
    if figures.cases != n:
        figures.problems.append(f"{figures.cases} cases for {n} accepted discharges")
    if any(v != 1 for v in episodes.values()):
        figures.problems.append("an episode has more than one case")
    if figures.invited != n:
        left = Counter(c["state"] for c in mine if c["state"] != "invited")
        figures.problems.append(f"{n - figures.invited} cases not invited (states: {dict(left)})")
    refs = {c["reference"] for c in mine}
    if len(per_inv) != expected_invitations or any(ref not in refs for ref, _ in per_inv):
        figures.problems.append(f"{len(per_inv)} distinct invitations, expected {expected_invitations}")
    if any(v != 1 for v in per_inv.values()):
        figures.problems.append("a participant got two different invitations for one case")
    if figures.dead_lettered:
        figures.problems.append(f"{figures.dead_lettered} dead letters")
    print("\n" + figures.line(label), flush=True)
    print(json.dumps({"label": label, "problems": figures.problems}), flush=True)
    return figures
