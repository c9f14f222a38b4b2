"""Hospital intake: parse → store message + acknowledgement (+ follow-up work) in one transaction → answer.

The acknowledgement is only returned after the transaction has committed, so an ``AA`` / ``ok`` means
the message is durably stored and its follow-up work enqueued. A resent message (same control id from
the same sender) gets the stored acknowledgement again and has no second effect.

If storing fails (database down, ``on_event`` raised), the exception propagates: the MLLP server then
closes the connection without an ACK and the HTTP layer should answer 503, so the sender resends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from uuid import uuid4

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.clock import STOCKHOLM
from shared.foreground import foreground_of
from shared.hospital import HospitalEvent
from shared.persistence import insert_once, utcnow

from .fhir_messaging import DEFAULT_FHIR_BASE, parse_message_bundle
from .hl7v2 import parse_adt

log = logging.getLogger("sip.intake")

OnEvent = Callable[..., Awaitable[None]]
"""``async (conn, event)`` — or ``async (conn, event, correlation_id)`` with ``pass_correlation``."""
ACCEPTED = ("AA", "ok")
#: at most this many waiting messages share one commit
GROUP_MAX = 64


def _committers_for(engine: AsyncEngine) -> int:
    """Concurrent intake transactions on a pooled engine: half its connections (the rest for the
    service's background work), at least one, at most four."""
    size = getattr(engine.pool, "size", None)
    return max(1, min(4, size() // 2)) if callable(size) else 1


@dataclass
class _Pending:
    message: dict[str, Any]
    answer: asyncio.Future[tuple[bytes, int | None]]


class IntakeService:
    """Receives hospital messages (HL7 v2 ADT, FHIR R4 message bundles) and records them.

    :param engine: the service's database (SQLite or PostgreSQL, async).
    :param table: the table from :func:`~services.planning.intake.store.intake_tables` (created by
        the caller together with the rest of the service's metadata).
    :param on_event: ``async (conn, event)`` called once per event of an *accepted, new* message,
        inside the transaction that stores the message — enqueue follow-up work (outbox) with
        ``conn``. Raise only for failures that should make the sender retry: an exception rolls the
        whole message back and no acknowledgement is sent.
    :param default_tz: zone for HL7/FHIR times without an offset (Europe/Stockholm).
    :param fhir_base: the service's public FHIR base (``[public base url]/fhir``): the answers to FHIR
        messages give their entries absolute ``fullUrl``s under it.
    :param observe: ``(source, hospital_id, outcome)`` after each message is recorded (``outcome`` its
        ACK code / FHIR outcome, ``duplicate`` for a resend answered from the store) — the metrics.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        table: sa.Table,
        *,
        on_event: OnEvent | None = None,
        default_tz: tzinfo = STOCKHOLM,
        clock: Callable[[], datetime] = utcnow,
        fhir_base: str = DEFAULT_FHIR_BASE,
        pass_correlation: bool = False,
        observe: Callable[[str, str | None, str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._table = table
        self._on_event = on_event
        self._tz = default_tz
        self._clock = clock
        self._fhir_base = fhir_base
        self._pass_correlation = pass_correlation
        self._observe = observe or (lambda source, hospital_id, outcome: None)
        #: group commit: the messages waiting for the next commit, and the tasks committing them —
        #: one on SQLite (one connection, one writer); on PostgreSQL up to half the pool at once, so
        #: a message that arrives while a commit is under way starts its own instead of waiting for
        #: that one's round trips (each connection's transaction still holds the messages it took)
        self._pending: list[_Pending] = []
        self._committers: set[asyncio.Task[None]] = set()
        #: committers started or between groups, about to take what is pending
        self._taking = 0
        self._max_committers = 1 if engine.dialect.name == "sqlite" else _committers_for(engine)
        #: the intake is the engine's foreground work: from a message's arrival to its answer, its
        #: transactions take the connection first and background work waits to begin its next one
        self._foreground = foreground_of(engine)

    async def handle_hl7(self, raw: bytes) -> bytes:
        """One HL7 v2 message (MLLP framing removed) → the ACK bytes to send back."""
        with self._foreground.work():
            return await self._handle_hl7(raw)

    async def _handle_hl7(self, raw: bytes) -> bytes:
        outcome = parse_adt(raw, default_tz=self._tz)
        if outcome.ack_code != "AA":
            log.info(
                "hl7 message refused",
                extra={
                    "ack": outcome.ack_code,
                    "control_id": outcome.control_id,
                    "reason": outcome.error.text if outcome.error else None,
                },
            )
        body, _ = await self._record(
            source="hl7v2",
            sender=outcome.sender,
            control_id=outcome.control_id,
            raw=raw,
            message_type=outcome.message_type,
            outcome=outcome.ack_code,
            http_status=None,
            response=outcome.ack,
            error=outcome.error.text if outcome.error else None,
            events=outcome.events,
        )
        return body

    async def handle_fhir(self, bundle_json: bytes) -> tuple[int, dict[str, Any]]:
        """A FHIR R4 message Bundle (``$process-message`` body) → ``(http status, response)``.

        The response is a message Bundle with ``MessageHeader.response.code = ok`` when accepted —
        MedCom's acknowledgement message for a MedCom HospitalNotification, FHIR's response message for
        the others — and an ``OperationOutcome`` (status 400/422) when refused.
        """
        with self._foreground.work():
            return await self._handle_fhir(bundle_json)

    async def _handle_fhir(self, bundle_json: bytes) -> tuple[int, dict[str, Any]]:
        outcome = parse_message_bundle(
            bundle_json, default_tz=self._tz, now=self._clock(), fhir_base=self._fhir_base
        )
        error = None
        if not outcome.accepted:
            error = "; ".join(i.get("diagnostics", "") for i in outcome.body.get("issue", []))
        body, status = await self._record(
            source="fhir",
            sender=outcome.sender,
            control_id=outcome.message_id,
            raw=bundle_json if isinstance(bundle_json, bytes) else str(bundle_json).encode(),
            message_type=outcome.events[0].source_event_code if outcome.events else None,
            outcome=outcome.outcome_code,
            http_status=outcome.status,
            response=json.dumps(outcome.body, separators=(",", ":")).encode(),
            error=error,
            events=outcome.events,
        )
        return int(status or 500), json.loads(body)

    # ------------------------------------------------------------------ storage

    async def _record(self, **message: Any) -> tuple[bytes, int | None]:
        """Store one message (group commit): the answer once it is committed.

        Messages that arrive while a commit is under way — several MLLP connections, FHIR requests —
        wait together and are stored by the next commit, in ONE transaction (each message with its
        own rows and outbox events, in arrival order): one BEGIN/COMMIT, and on PostgreSQL one WAL
        flush, for all of them. Each answer goes back only after that commit. A message alone waits
        for nobody. If the shared transaction fails (a message's ``on_event`` raised, the database
        went away, a concurrent copy committed first), each of its messages is stored again in a
        transaction of its own, so one message's failure is its own.
        """
        loop = asyncio.get_running_loop()
        item = _Pending(message, loop.create_future())
        # a sender gone before its answer (connection closed) leaves no "exception never retrieved"
        item.answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.append(item)
        if not self._taking and len(self._committers) < self._max_committers:
            # the committer inherits this context: foreground (shared.foreground), its transactions first
            task = loop.create_task(self._commit_pending(), name="intake-group-commit")
            self._taking += 1
            self._committers.add(task)
            task.add_done_callback(self._committers.discard)
        return await asyncio.shield(item.answer)

    async def _commit_pending(self) -> None:
        batch: list[_Pending] = []
        try:
            while self._pending:
                # one turn of the event loop first: messages already received on other connections
                # (their bytes in the socket buffers while the last commit held the loop) are parsed
                # and join this group. It waits for nothing that has not arrived: a message alone is
                # committed a few microseconds later, and a burst from several connections shares
                # one commit where it took one and then another (MLLP, 4 connections: ~940 → ~1,100/s)
                await asyncio.sleep(0)
                batch = self._pending[:GROUP_MAX]
                del self._pending[:GROUP_MAX]
                self._taking -= 1
                try:
                    await self._commit_group(batch)
                finally:
                    self._taking += 1
                batch = []
        except BaseException as exc:  # cancelled (shutdown): nobody waits for an answer that never comes
            for item in batch + self._pending:
                if not item.answer.done():
                    item.answer.set_exception(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
            self._pending.clear()
            raise
        finally:
            self._taking -= 1

    async def _commit_group(self, batch: list[_Pending]) -> None:
        if len(batch) > 1:
            try:
                async with self._engine.begin() as conn:
                    stored = [await self._store(conn, **item.message) for item in batch]
            except Exception:
                log.debug("group commit failed; storing its messages one by one", exc_info=True)
            else:
                for item, (answer, observed) in zip(batch, stored, strict=True):
                    self._observe(*observed)
                    item.answer.set_result(answer)
                return
        for item in batch:
            try:
                answer = await self._record_alone(item.message)
            except Exception as exc:
                item.answer.set_exception(exc)
            else:
                item.answer.set_result(answer)

    async def _record_alone(self, message: dict[str, Any]) -> tuple[bytes, int | None]:
        for attempt in (1, 2):
            try:
                async with self._engine.begin() as conn:
                    answer, observed = await self._store(conn, **message)
                self._observe(*observed)
                return answer
            except IntegrityError:
                if attempt == 2 or message.get("control_id") is None:
                    raise
                # a concurrent copy of the same message committed first: answer with its acknowledgement
        raise AssertionError("unreachable")

    async def _store(
        self,
        conn: AsyncConnection,
        *,
        source: str,
        sender: str,
        control_id: str | None,
        raw: bytes,
        message_type: str | None,
        outcome: str,
        http_status: int | None,
        response: bytes,
        error: str | None,
        events: tuple[HospitalEvent, ...],
    ) -> tuple[tuple[bytes, int | None], tuple[str, str | None, str]]:
        """Store one message in ``conn``'s transaction: its answer, and what to observe after commit.

        The row goes in with ``INSERT … ON CONFLICT DO NOTHING`` on (source, sender, control id): a
        resend (or a concurrent copy, which PostgreSQL makes wait for the first's commit) inserts
        nothing and is answered from the stored row — one statement for a new message, where a
        look-up first cost two."""
        t = self._table
        sender = sender[:512]
        control_id = control_id[:200] if control_id else None
        digest = hashlib.sha256(raw).hexdigest()
        accepted = outcome in ACCEPTED
        if accepted:
            events = tuple([await self._link(conn, source, ev) for ev in events])
        first = events[0] if events else None
        correlation_id = str(uuid4())
        row = {
            "source": source,
            "sender": sender,
            "control_id": control_id,
            "message_type": (message_type or "")[:64] or None,
            "received_at": self._clock(),
            "content_sha256": digest,
            "raw": raw,
            "outcome": outcome,
            "http_status": http_status,
            "response_body": response,
            "error": error,
            "events": json.dumps([e.model_dump(mode="json") for e in events]),
            "hospital_id": (first.hospital_id or "")[:200] if first else None,
            "stay_id": first.stay_id[:200] if first else None,
            "primary_kind": first.kind if first else None,
            "status": "accepted" if accepted else "refused",
            "status_reason": None if accepted else error,
            "correlation_id": correlation_id,
            "patient_identifier": first.patient.value if first else None,
            "effect": None,
            "replay_of": None,
        }
        inserted = await insert_once(conn, t, row)
        if inserted is None:  # no ON CONFLICT: look first (a race ends in IntegrityError and a retry)
            inserted = control_id is None or await self._stored(conn, source, sender, control_id) is None
            if inserted:
                await conn.execute(t.insert(), row)
        if not inserted:
            assert control_id is not None  # NULL control ids never conflict
            stored = await self._stored(conn, source, sender, control_id)
            assert stored is not None
            if stored.content_sha256 != digest:
                log.warning(
                    "duplicate control id with different content; answered with the stored acknowledgement",
                    extra={"source": source, "control_id": control_id},
                )
            hospital = events[0].hospital_id if events else None
            return (bytes(stored.response_body), stored.http_status), (source, hospital, "duplicate")
        if accepted and self._on_event is not None:
            for ev in events:
                if self._pass_correlation:
                    await self._on_event(conn, ev, correlation_id)
                else:
                    await self._on_event(conn, ev)
        return (response, http_status), (source, first.hospital_id if first else None, outcome)

    async def _stored(self, conn: AsyncConnection, source: str, sender: str, control_id: str) -> Any:
        t = self._table
        return (
            await conn.execute(
                sa.select(t.c.response_body, t.c.http_status, t.c.content_sha256).where(
                    t.c.source == source, t.c.sender == sender, t.c.control_id == control_id
                )
            )
        ).first()

    async def _link(self, conn: AsyncConnection, source: str, ev: HospitalEvent) -> HospitalEvent:
        """Point a cancellation/correction at the stored message it refers to (A13 → the A03)."""
        if ev.kind == "cancelled" and ev.cancels and not ev.cancels_message_id:
            ref = await self._latest(conn, source, ev, ev.cancels)
            return ev.model_copy(update={"cancels_message_id": ref}) if ref else ev
        if ev.kind == "corrected" and ev.corrects and not ev.corrects_message_id:
            ref = await self._latest(conn, source, ev, ev.corrects)
            return ev.model_copy(update={"corrects_message_id": ref}) if ref else ev
        return ev

    async def _latest(self, conn: AsyncConnection, source: str, ev: HospitalEvent, kind: str) -> str | None:
        t = self._table
        return await conn.scalar(
            sa.select(t.c.control_id)
            .where(
                t.c.source == source,
                t.c.hospital_id == (ev.hospital_id or ""),
                t.c.stay_id == ev.stay_id,
                t.c.primary_kind == kind,
                t.c.outcome.in_(ACCEPTED),
            )
            .order_by(t.c.id.desc())
            .limit(1)
        )


def stored_events(row_events: str) -> list[HospitalEvent]:
    """Rebuild the events of a stored row (``intake_messages.events``)."""
    return [HospitalEvent.model_validate(e) for e in json.loads(row_events)]
