"""Hospital intake: parse → store message + acknowledgement (+ follow-up work) in one transaction → answer.

The acknowledgement is only returned after the transaction has committed, so an ``AA`` / ``ok`` means
the message is durably stored and its follow-up work enqueued. A resent message (same control id from
the same sender) gets the stored acknowledgement again and has no second effect.

If storing fails (database down, ``on_event`` raised), the exception propagates: the MLLP server then
closes the connection without an ACK and the HTTP layer should answer 503, so the sender resends.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, tzinfo
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.clock import STOCKHOLM
from shared.hospital import HospitalEvent
from shared.persistence import utcnow

from .fhir_messaging import DEFAULT_FHIR_BASE, parse_message_bundle
from .hl7v2 import parse_adt

log = logging.getLogger("sip.intake")

OnEvent = Callable[[AsyncConnection, HospitalEvent], Awaitable[None]]
ACCEPTED = ("AA", "ok")


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
        observe: Callable[[str, str | None, str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._table = table
        self._on_event = on_event
        self._tz = default_tz
        self._clock = clock
        self._fhir_base = fhir_base
        self._observe = observe or (lambda source, hospital_id, outcome: None)

    async def handle_hl7(self, raw: bytes) -> bytes:
        """One HL7 v2 message (MLLP framing removed) → the ACK bytes to send back."""
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

    async def _record(
        self,
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
    ) -> tuple[bytes, int | None]:
        t = self._table
        sender = sender[:512]
        control_id = control_id[:200] if control_id else None
        digest = hashlib.sha256(raw).hexdigest()
        for attempt in (1, 2):
            try:
                async with self._engine.begin() as conn:
                    if control_id is not None:
                        row = (
                            await conn.execute(
                                sa.select(t.c.response_body, t.c.http_status, t.c.content_sha256).where(
                                    t.c.source == source, t.c.sender == sender, t.c.control_id == control_id
                                )
                            )
                        ).first()
                        if row is not None:
                            if row.content_sha256 != digest:
                                log.warning(
                                    "duplicate control id with different content; answered with "
                                    "the stored acknowledgement",
                                    extra={"source": source, "control_id": control_id},
                                )
                            self._observe(source, events[0].hospital_id if events else None, "duplicate")
                            return bytes(row.response_body), row.http_status
                    accepted = outcome in ACCEPTED
                    if accepted:
                        events = tuple([await self._link(conn, source, ev) for ev in events])
                    first = events[0] if events else None
                    await conn.execute(
                        t.insert().values(
                            source=source,
                            sender=sender,
                            control_id=control_id,
                            message_type=(message_type or "")[:64] or None,
                            received_at=self._clock(),
                            content_sha256=digest,
                            raw=raw,
                            outcome=outcome,
                            http_status=http_status,
                            response_body=response,
                            error=error,
                            events=json.dumps([e.model_dump(mode="json") for e in events]),
                            hospital_id=(first.hospital_id or "")[:200] if first else None,
                            stay_id=first.stay_id[:200] if first else None,
                            primary_kind=first.kind if first else None,
                        )
                    )
                    if accepted and self._on_event is not None:
                        for ev in events:
                            await self._on_event(conn, ev)
                self._observe(source, first.hospital_id if first else None, outcome)
                return response, http_status
            except IntegrityError:
                if attempt == 2 or control_id is None:
                    raise
                # a concurrent copy of the same message committed first: answer with its acknowledgement
        raise AssertionError("unreachable")

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
