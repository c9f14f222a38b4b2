"""The message store, for operators: find any inbound hospital message, see what it led to, replay it.

Every inbound message — HL7 v2 over MLLP, FHIR ``$process-message``, the AMQP JSON discharge notice —
is a row of ``intake_messages`` (services/planning/intake/store.py) with its status (``accepted``,
``refused`` with the reason, ``effected``, ``dead-lettered`` with the reason), its correlation id, the
person it is about and its effect (the stay and the case). The stay-event subscriber writes the effect
back (:func:`mark`), by the message's correlation id.

Operators only (the ``sip:operator`` scope). The list never shows raw content or the person; a search
by the person has the personnummer in the JSON body only and is audited like every other read of
personal data (a ``message_views`` row and a ``consent.access-recorded.v1`` through the outbox), and
so is every view of a raw message.

A replay runs the stored message through the same path again as a new row (control id
``<original>~replay<n>``, ``replay_of`` = the original), so the lineage is kept. It is idempotent by
design: a message whose lineage has an effect already is not replayed (nothing changes), nor one whose
replay is still under way; a replay after a fix (a directory entry that was missing) produces the
missing effect, once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import uuid4

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from services.planning import access
from services.planning.intake import stored_events
from shared.access import rule
from shared.auth import Caller, CallerDep
from shared.clock import Clock
from shared.contracts import DischargeNotified, HospitalStayEvent
from shared.hospital import HospitalEvent
from shared.identifiers import mask
from shared.persistence import enqueue
from shared.runtime import ServiceRuntime

log = logging.getLogger("sip.planning.messages")

Status = Literal["accepted", "refused", "effected", "dead-lettered"]
STATUSES: tuple[str, ...] = ("accepted", "refused", "effected", "dead-lettered")
AMQP = "amqp"
MAX_ID = 2_147_483_647  # the id column is a 32-bit integer on PostgreSQL
MessageId = Annotated[int, Path(ge=1, le=MAX_ID, description="The stored message's id")]

LIST_MESSAGES = rule(
    "The message store (time, sender, type, control and correlation id, status, effect; no content, no "
    "person): operators only, others 403",
    allowed=("operator",),
)
SEARCH_PATIENT = rule(
    "Messages about one person (personnummer in the body, never the URL): operators only; every search "
    "is recorded in the person's audit trail and in message_views",
    allowed=("operator",),
)
READ_MESSAGE = rule(
    "One stored message's metadata and lineage (the person masked): operators only",
    allowed=("operator",),
)
READ_RAW = rule(
    "A stored message as received (health data): operators only; every view is recorded in the person's "
    "audit trail and in message_views",
    allowed=("operator",),
)
REPLAY = rule(
    "Replay a stored inbound message through the same intake path (idempotent: no second effect): "
    "operators only",
    allowed=("operator",),
)

#: re-parse a refused message: (source, raw) -> (accepted, events, reason)
Reparse = Callable[[str, bytes], tuple[bool, Sequence[HospitalEvent], str | None]]


class MessageOut(BaseModel):
    id: int
    source: str = Field(description="hl7v2 | fhir | amqp")
    received_at: datetime
    sender: str = Field(description="MSH-3|MSH-4, MessageHeader.source.endpoint or the hospital's HSA-id")
    message_type: str | None
    control_id: str | None = Field(description="MSH-10 / MessageHeader.id / message_id")
    correlation_id: str | None
    outcome: str = Field(description="The acknowledgement: AA/AE/AR, ok/fatal-error")
    status: str = Field(description="accepted | refused | effected | dead-lettered")
    reason: str | None = Field(description="Why it was refused or dead-lettered")
    hospital_id: str | None
    stay_id: str | None
    case_id: str | None = Field(description="The SIP case it opened or changed")
    replay_of: int | None


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None = Field(description="Pass as cursor for the next (older) page")


class MessageDetail(MessageOut):
    patient: str | None = Field(description="Masked identifier (birth year only)")
    effect: dict[str, Any] | None
    original: MessageOut | None = Field(description="The message this one replays")
    replays: list[MessageOut]


class PatientSearch(BaseModel):
    patient: str = Field(description="Personnummer / samordningsnummer (12 digits)", max_length=64)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=100, ge=1, le=500)
    cursor: str | None = None


class ReplayOut(BaseModel):
    replayed: bool
    reason: str
    original: int
    replay: MessageOut | None = None


def _out(row: Any) -> MessageOut:
    effect = json.loads(row.effect) if row.effect else {}
    return MessageOut(
        id=row.id, source=row.source, received_at=row.received_at, sender=row.sender,
        message_type=row.message_type, control_id=row.control_id, correlation_id=row.correlation_id,
        outcome=row.outcome, status=row.status, reason=row.status_reason, hospital_id=row.hospital_id,
        stay_id=row.stay_id, case_id=effect.get("case_id"), replay_of=row.replay_of,
    )  # fmt: skip


def list_columns(t: sa.Table) -> list[sa.Column[Any]]:
    """Every column but the content (raw, response, events) — the list never reads them."""
    hidden = {"raw", "response_body", "events"}
    return [c for c in t.c if c.name not in hidden]


def search_query(
    t: sa.Table, *, since: datetime | None = None, until: datetime | None = None, sender: str | None = None,
    type: str | None = None, status: str | None = None, control_id: str | None = None,
    correlation_id: str | None = None, patient: str | None = None, before_id: int | None = None,
    limit: int = 100,
) -> sa.Select[Any]:  # fmt: skip
    """Newest first, keyset-paged by id (each filter has an index; see ``MESSAGE_STORE_INDEXES``)."""
    q = sa.select(*list_columns(t))
    for col, value in (
        (t.c.sender, sender), (t.c.message_type, type), (t.c.status, status),
        (t.c.control_id, control_id), (t.c.correlation_id, correlation_id),
        (t.c.patient_identifier, patient),
    ):  # fmt: skip
        if value is not None:
            q = q.where(col == value)
    if since is not None:
        q = q.where(t.c.received_at >= since)
    if until is not None:
        q = q.where(t.c.received_at < until)
    if before_id is not None:
        q = q.where(t.c.id < before_id)
    return q.order_by(t.c.id.desc()).limit(limit)


def _cursor(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 10 or int(value) > MAX_ID:
        raise HTTPException(400, detail="cursor: pass the next_cursor of the previous page")
    return int(value)


def _page(rows: Sequence[Any], limit: int) -> MessagePage:
    items = [_out(r) for r in rows]
    return MessagePage(items=items, next_cursor=str(items[-1].id) if len(items) == limit else None)


def operator_only(caller: Caller | None) -> None:
    """The sandbox (authentication off) and operators; everyone else 403."""
    if caller is not None and not caller.operator:
        raise HTTPException(403, detail="the message store is for operators (scope sip:operator)")


# ---- the effect, written back by the subscribers -----------------------------------------------------
async def mark(
    conn: AsyncConnection, t: sa.Table, *, correlation_id: str | None = None, message_id: int | None = None,
    status: Status, effect: dict[str, Any] | None = None, reason: str | None = None,
) -> None:  # fmt: skip
    """The outcome of handling a stored message (by its correlation id, or its row id). A message that
    has been effected stays so (a later event of it without effect does not undo that)."""
    if correlation_id is None and message_id is None:
        return
    where = t.c.id == message_id if message_id is not None else t.c.correlation_id == correlation_id
    values: dict[str, Any] = {"status": status, "status_reason": reason}
    if effect is not None:
        values["effect"] = json.dumps(effect, separators=(",", ":"))
    await conn.execute(t.update().where(where, t.c.status != "effected").values(**values))


async def store_amqp(conn: AsyncConnection, t: sa.Table, msg: DischargeNotified, at: datetime) -> int:
    """The AMQP JSON discharge notice as a stored inbound message; its row id. The same notice again
    (replayed from its dead-letter queue after a fix) finds its row."""
    raw = msg.model_dump_json().encode()
    found = await conn.scalar(
        sa.select(t.c.id).where(
            t.c.source == AMQP, t.c.sender == msg.hospital_hsa_id[:512], t.c.control_id == str(msg.message_id)
        )
    )
    if found is not None:
        return int(found)
    result = await conn.execute(
        t.insert().values(
            source=AMQP,
            sender=msg.hospital_hsa_id[:512],
            control_id=str(msg.message_id),
            message_type=msg.routing_key,
            received_at=at,
            content_sha256=hashlib.sha256(raw).hexdigest(),
            raw=raw,
            outcome="AA",
            response_body=b"",
            events="[]",
            hospital_id=msg.hospital_hsa_id[:200],
            stay_id=msg.episode_id[:200],
            primary_kind="ready-for-discharge",
            status="accepted",
            correlation_id=(msg.correlation_id or "")[:64] or None,
            patient_identifier=msg.patient.identifier[:64],
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


# ---- the routes ----------------------------------------------------------------------------------------
def build_router(
    runtime: ServiceRuntime, clock: Clock, table: sa.Table, views: sa.Table, reparse: Reparse,
    to_event: Callable[[DischargeNotified], HospitalEvent],
) -> APIRouter:  # fmt: skip
    router = APIRouter()
    t = table

    async def audit(caller: Caller | None, kind: str, *, patient: str | None, message_id: int | None) -> None:
        """A message_views row and, with a person, a consent.access-recorded.v1 — before the answer."""
        if caller is None:
            return  # the sandbox: no reader to record
        async with runtime.unit_of_work() as uow:
            await uow.conn.execute(
                views.insert().values(
                    kind=kind,
                    message_id=message_id,
                    viewer_hsa_id=caller.hsa_id,
                    viewer_subject=caller.subject[:128] or None,
                    viewed_at=clock.now(),
                )
            )
            person = access.person_of(patient)
            if person is not None:
                what = (
                    f"IntakeMessage/{message_id}/raw" if message_id is not None else "IntakeMessage?patient"
                )
                await uow.send(access.access_recorded(
                    caller, what=what, basis="operator", allowed=True, at=clock.now(),
                    action="read" if message_id is not None else "search", patient_identifier=person,
                ))  # fmt: skip

    async def one(conn: AsyncConnection, message_id: int) -> Any:
        row = (await conn.execute(sa.select(t).where(t.c.id == message_id))).first()
        if row is None:
            raise HTTPException(404, detail="no such message")
        return row

    @router.get(
        "/messages", response_model=MessagePage, tags=["messages"], summary="Search the message store",
        openapi_extra=LIST_MESSAGES,
    )  # fmt: skip
    async def list_messages(
        caller: CallerDep,
        since: Annotated[datetime | None, Query(description="Received at or after")] = None,
        until: Annotated[datetime | None, Query(description="Received before")] = None,
        sender: Annotated[str | None, Query(max_length=512)] = None,
        type: Annotated[
            str | None, Query(max_length=64, description="ADT^A03, hospital.discharge.v1, ...")
        ] = None,
        status: Annotated[Status | None, Query()] = None,
        control_id: Annotated[str | None, Query(max_length=200)] = None,
        correlation_id: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: Annotated[str | None, Query(max_length=20)] = None,
    ) -> MessagePage:
        operator_only(caller)
        q = search_query(
            t, since=since, until=until, sender=sender, type=type, status=status, control_id=control_id,
            correlation_id=correlation_id, before_id=_cursor(cursor), limit=limit,
        )  # fmt: skip
        async with runtime.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return _page(rows, limit)

    @router.post(
        "/messages/search", response_model=MessagePage, tags=["messages"],
        summary="The messages about one person (audited)", openapi_extra=SEARCH_PATIENT,
    )  # fmt: skip
    async def search_patient(body: PatientSearch, caller: CallerDep) -> MessagePage:
        operator_only(caller)
        person = access.person_of(body.patient)
        if person is None:
            raise HTTPException(422, detail="patient: a personnummer or samordningsnummer (12 digits)")
        before = _cursor(body.cursor)
        await audit(caller, "patient-search", patient=person, message_id=None)
        q = search_query(
            t, since=body.since, until=body.until, patient=person, before_id=before, limit=body.limit
        )
        async with runtime.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return _page(rows, body.limit)

    @router.get(
        "/messages/{message_id}", response_model=MessageDetail, tags=["messages"],
        summary="One stored message: metadata, effect and lineage", openapi_extra=READ_MESSAGE,
    )  # fmt: skip
    async def get_message(message_id: MessageId, caller: CallerDep) -> MessageDetail:
        operator_only(caller)
        cols = list_columns(t)
        async with runtime.engine.connect() as conn:
            row = (await conn.execute(sa.select(*cols).where(t.c.id == message_id))).first()
            if row is None:
                raise HTTPException(404, detail="no such message")
            original = None
            if row.replay_of is not None:
                original = (await conn.execute(sa.select(*cols).where(t.c.id == row.replay_of))).first()
            replays = (
                await conn.execute(sa.select(*cols).where(t.c.replay_of == row.id).order_by(t.c.id))
            ).all()
        return MessageDetail(
            **_out(row).model_dump(),
            patient=mask(row.patient_identifier) if row.patient_identifier else None,
            effect=json.loads(row.effect) if row.effect else None,
            original=_out(original) if original is not None else None,
            replays=[_out(r) for r in replays],
        )

    @router.get(
        "/messages/{message_id}/raw", tags=["messages"], summary="The message as received (audited)",
        response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}},
        openapi_extra=READ_RAW,
    )  # fmt: skip
    async def raw_message(message_id: MessageId, caller: CallerDep) -> Response:
        operator_only(caller)
        async with runtime.engine.connect() as conn:
            row = await one(conn, message_id)
        await audit(caller, "raw", patient=row.patient_identifier, message_id=message_id)
        media = {"hl7v2": "x-application/hl7-v2+er7", "fhir": "application/fhir+json"}.get(
            row.source, "application/json"
        )
        return Response(bytes(row.raw), media_type=media, headers={"Cache-Control": "no-store"})

    @router.post(
        "/messages/{message_id}/replay", response_model=ReplayOut, tags=["messages"],
        summary="Replay a stored inbound message (idempotent)", openapi_extra=REPLAY,
    )  # fmt: skip
    async def replay(message_id: MessageId, caller: CallerDep) -> ReplayOut:
        operator_only(caller)
        async with runtime.unit_of_work() as uow:
            conn = uow.conn
            row = await one(conn, message_id)
            root = (await one(conn, row.replay_of)) if row.replay_of is not None else row
            lineage = (
                await conn.execute(
                    sa.select(t.c.id, t.c.status, t.c.effect)
                    .where(sa.or_(t.c.id == root.id, t.c.replay_of == root.id))
                    .with_for_update()
                )
            ).all()
            if any(r.status == "effected" for r in lineage):
                return ReplayOut(replayed=False, reason="already effected: a replay changes nothing",
                                 original=root.id)  # fmt: skip
            if any(r.id != root.id and r.status == "accepted" and r.effect is None for r in lineage):
                return ReplayOut(
                    replayed=False, reason="a replay of this message is under way", original=root.id
                )
            accepted, events, reason = _events_of(root, reparse, to_event)
            correlation_id = str(uuid4())
            n = len(lineage)
            first = events[0] if events else None
            result = await conn.execute(
                t.insert().values(
                    source=root.source,
                    sender=root.sender,
                    control_id=f"{root.control_id or root.id}~replay{n}"[-200:],
                    message_type=root.message_type,
                    received_at=clock.now(),
                    content_sha256=root.content_sha256,
                    raw=root.raw,
                    outcome="AA" if accepted else "AE",
                    response_body=b"",
                    error=reason,
                    events=json.dumps([e.model_dump(mode="json") for e in events]),
                    hospital_id=(first.hospital_id or "")[:200] if first else root.hospital_id,
                    stay_id=first.stay_id[:200] if first else root.stay_id,
                    primary_kind=first.kind if first else root.primary_kind,
                    status="accepted" if accepted else "refused",
                    status_reason=None if accepted else reason,
                    correlation_id=correlation_id,
                    patient_identifier=root.patient_identifier,
                    replay_of=root.id,
                )
            )
            new_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            if accepted:
                for ev in events:
                    await enqueue(  # handed to the stay-event handler in-process, as the intake's
                        conn,
                        runtime.outbox,
                        HospitalStayEvent(event=ev, correlation_id=correlation_id),
                        local=True,
                    )
            new = (await conn.execute(sa.select(*list_columns(t)).where(t.c.id == new_id))).one()
        runtime.relay.wake()
        log.info("message replayed", extra={"message_id": root.id, "replay_id": new_id, "accepted": accepted})
        return ReplayOut(
            replayed=True,
            reason="replayed" if accepted else "refused again",
            original=root.id,
            replay=_out(new),
        )

    return router


def _events_of(
    row: Any, reparse: Reparse, to_event: Callable[[DischargeNotified], HospitalEvent]
) -> tuple[bool, Sequence[HospitalEvent], str | None]:
    """The events to run again: the stored ones of an accepted message; a refused one is parsed again."""
    if row.source == AMQP:
        return True, [to_event(DischargeNotified.model_validate_json(bytes(row.raw)))], None
    if row.outcome in ("AA", "ok"):
        return True, stored_events(row.events), None
    return reparse(row.source, bytes(row.raw))
