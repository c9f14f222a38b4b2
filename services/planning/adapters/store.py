"""SQL storage of hospital stays, SIP cases, plan versions and sent invitations."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from services.planning.domain import OPEN_STATES, Participant, SipCase
from services.planning.fhir import care_plan
from services.planning.plan import STORED, Approval, Meeting, MeetingPreferences, PlanContent
from services.planning.ports import RelatedTo
from services.planning.stays import Cancellation, Stay
from shared.persistence import UTCDateTime, insert_once

metadata = sa.MetaData()

stays = sa.Table(
    "hospital_stays",
    metadata,
    sa.Column("hospital_id", sa.String(200), primary_key=True),
    sa.Column("stay_id", sa.String(200), primary_key=True),
    sa.Column("patient_system", sa.String(200), nullable=False),
    sa.Column("patient_value", sa.String(64), nullable=False),
    sa.Column("patient_kind", sa.String(20), nullable=False),
    sa.Column("kommun_code", sa.String(4)),
    sa.Column("primary_care_unit", sa.String(200)),
    sa.Column("admitted_at", UTCDateTime),
    sa.Column("expected_discharge_at", UTCDateTime),
    sa.Column("ready_at", UTCDateTime),
    sa.Column("discharged_at", UTCDateTime),
    sa.Column("on_leave", sa.Boolean, nullable=False, default=False),
    sa.Column("deceased_at", UTCDateTime),
    sa.Column("applied", sa.Text, nullable=False),  # JSON: kind → [time, message id]
    sa.Column("cancelled", sa.Text, nullable=False),  # JSON: kind → [time, message id | null]
    sa.Column("case_id", sa.String(36)),
    sa.Column("case_opened_by", sa.String(40)),
    sa.Column("note", sa.String(200)),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # the stays listing, newest first, of all hospitals or one (migration 0005_hot_query_indexes)
    sa.Index("ix_hospital_stays_updated", "updated_at"),
    sa.Index("ix_hospital_stays_hospital_updated", "hospital_id", "updated_at"),
)

cases = sa.Table(
    "sip_cases",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("reference", sa.String(32), nullable=False, unique=True),
    sa.Column("hospital_hsa_id", sa.String(200), nullable=False),  # the stay's hospital id
    sa.Column("episode_id", sa.String(200), nullable=False),  # the stay id
    sa.Column("patient_identifier", sa.String(12), nullable=False, index=True),
    sa.Column("is_child", sa.Boolean, nullable=False),
    sa.Column("kommun_code", sa.String(4), nullable=False),
    sa.Column("owner_hsa_id", sa.String(64), nullable=False),
    sa.Column("participants", sa.Text, nullable=False),
    sa.Column("state", sa.String(32), nullable=False, index=True),
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("ready_for_discharge_at", UTCDateTime),
    sa.Column("invitation_due_at", UTCDateTime),
    sa.Column("correlation_id", sa.String(128)),
    sa.Column("consent_id", sa.String(36)),
    sa.Column("invited_at", UTCDateTime),
    sa.Column("suspended_from", sa.String(32)),
    sa.Column("closed_reason", sa.String(200)),
    sa.Column("origin", sa.String(16), nullable=False, default="discharge"),
    sa.Column("proposed_by", sa.String(32)),
    sa.Column("external_id", sa.String(300), index=True),
    # the person's meeting preferences, the meeting, the plan (draft and in force), the approval (JSON)
    sa.Column("details", sa.Text, nullable=False, default="{}"),
    sa.Column("follow_up_date", sa.Date),
    sa.Column("updated_at", UTCDateTime),
    # the guardians named on a child's consent (JSON list of personnummer; they may read the plan)
    sa.Column("guardians", sa.Text),
    # one live case per stay is kept by hospital_stays.case_id (a cancelled case frees the stay)
    sa.Index("ix_case_episode", "hospital_hsa_id", "episode_id"),
)

care_plans = sa.Table(
    "care_plan_versions",
    metadata,
    sa.Column("case_id", sa.String(36), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("resource", sa.Text, nullable=False),  # the R4 CarePlan of this version
    sa.Column(
        "snapshot", sa.Text, nullable=False, default="{}"
    ),  # the case as it was (R5 is rendered from it)
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    # Provenance: what changed and who did it
    sa.Column("activity", sa.String(16), nullable=False, default="UPDATE"),  # CREATE | UPDATE
    sa.Column("agent_hsa_id", sa.String(64)),
    sa.Column("reason", sa.String(200)),
)

invitations = sa.Table(
    "case_invitations",
    metadata,
    sa.Column("case_id", sa.String(36), primary_key=True),
    sa.Column("recipient_hsa_id", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("sent_at", UTCDateTime, nullable=False),
)


# Statements built once, values bound at execution (``insert().values(...)`` built per call costs
# several times what SQLite needs for the statement itself).
_INSERT_STAY = stays.insert()
_UPDATE_STAY = stays.update().where(
    stays.c.hospital_id == sa.bindparam("k_hospital_id"), stays.c.stay_id == sa.bindparam("k_stay_id")
)
_INSERT_CASE = cases.insert()
_UPDATE_CASE = cases.update().where(cases.c.id == sa.bindparam("k_id"))
_GET_CASE = cases.select().where(cases.c.id == sa.bindparam("k_id"))
_GET_CASE_FOR_UPDATE = _GET_CASE.with_for_update()  # rendered without FOR UPDATE on SQLite
#: SQLite: the case and its latest plan version in one statement. Only there: every transaction holds
#: the database's write lock from its BEGIN IMMEDIATE (shared.persistence), so nothing else adds a
#: version until it ends. (On PostgreSQL a subquery would read the snapshot taken before the row lock
#: was granted and miss a version committed meanwhile: there the version is read after the lock.)
_GET_CASE_WITH_PLAN_VERSION = sa.select(
    cases,
    sa.select(sa.func.max(care_plans.c.version))
    .where(care_plans.c.case_id == cases.c.id)
    .scalar_subquery()
    .label("sip_latest_plan_version"),
).where(cases.c.id == sa.bindparam("k_id"))
_NEXT_PLAN_VERSION = sa.select(sa.func.max(care_plans.c.version)).where(
    care_plans.c.case_id == sa.bindparam("k_case_id")
)
_INSERT_PLAN = care_plans.insert()
_INSERT_INVITATION = invitations.insert()


def _case(row: Any) -> SipCase:
    return SipCase(
        id=UUID(row.id),
        reference=row.reference,
        hospital_hsa_id=row.hospital_hsa_id,
        episode_id=row.episode_id,
        patient_identifier=row.patient_identifier,
        is_child=row.is_child,
        kommun_code=row.kommun_code,
        owner_hsa_id=row.owner_hsa_id,
        participants=tuple(Participant(**p) for p in json.loads(row.participants)),
        state=row.state,
        opened_at=row.opened_at,
        ready_for_discharge_at=row.ready_for_discharge_at,
        invitation_due_at=row.invitation_due_at,
        correlation_id=row.correlation_id,
        consent_id=UUID(row.consent_id) if row.consent_id else None,
        invited_at=row.invited_at,
        suspended_from=row.suspended_from,
        closed_reason=row.closed_reason,
        origin=row.origin,
        proposed_by=row.proposed_by,
        external_id=row.external_id,
        follow_up_date=row.follow_up_date,
        guardian_identifiers=tuple(json.loads(getattr(row, "guardians", None) or "[]")),
        **_details_in(json.loads(row.details or "{}")),
    )


_DETAILS: dict[str, type[BaseModel]] = {
    "preferences": MeetingPreferences,
    "meeting": Meeting,
    "plan": PlanContent,
    "plan_in_force": PlanContent,
    "approval": Approval,
}


def _details_in(d: dict[str, Any]) -> dict[str, Any]:
    # context "stored": what was valid when it entered stays readable under rules tightened since
    out: dict[str, Any] = {
        k: m.model_validate(d[k], context=STORED) for k, m in _DETAILS.items() if d.get(k) is not None
    }
    if d.get("followed_up_at"):
        out["followed_up_at"] = datetime.fromisoformat(d["followed_up_at"])
    if d.get("invitees"):
        out["invitees"] = tuple(d["invitees"])
    return out


def _details_out(case: SipCase) -> str:
    d: dict[str, Any] = {
        k: getattr(case, k).model_dump(mode="json") for k in _DETAILS if getattr(case, k) is not None
    }
    if case.followed_up_at:
        d["followed_up_at"] = case.followed_up_at.isoformat()
    if case.invitees:
        d["invitees"] = list(case.invitees)
    return json.dumps(d, ensure_ascii=False)


def case_snapshot(case: SipCase) -> str:
    """The whole case as JSON, kept with each plan version (vread in any FHIR version renders from it)."""
    v = _values(case)
    return json.dumps({k: (x.isoformat() if isinstance(x, datetime | date) else x) for k, x in v.items()})


_DATETIMES = ("opened_at", "ready_for_discharge_at", "invitation_due_at", "invited_at", "updated_at")


def case_from_snapshot(text: str) -> SipCase:
    d = json.loads(text)
    for k in _DATETIMES:
        if d.get(k):
            d[k] = datetime.fromisoformat(d[k])
    if d.get("follow_up_date"):
        d["follow_up_date"] = date.fromisoformat(d["follow_up_date"])
    return _case(SimpleNamespace(**d))


def _stay(row: Any) -> Stay:
    return Stay(
        hospital_id=row.hospital_id,
        stay_id=row.stay_id,
        patient_system=row.patient_system,
        patient_value=row.patient_value,
        patient_kind=row.patient_kind,
        kommun_code=row.kommun_code,
        primary_care_unit=row.primary_care_unit,
        admitted_at=row.admitted_at,
        expected_discharge_at=row.expected_discharge_at,
        ready_at=row.ready_at,
        discharged_at=row.discharged_at,
        on_leave=row.on_leave,
        deceased_at=row.deceased_at,
        applied={k: (datetime.fromisoformat(t), m) for k, (t, m) in json.loads(row.applied).items()},
        cancelled={
            k: Cancellation(datetime.fromisoformat(t), m) for k, (t, m) in json.loads(row.cancelled).items()
        },
        case_id=row.case_id,
        case_opened_by=row.case_opened_by,
        note=row.note,
    )


def _stay_values(stay: Stay, at: datetime) -> dict[str, Any]:
    values = {f.name: getattr(stay, f.name) for f in dataclasses.fields(stay)}
    values["applied"] = json.dumps({k: [t.isoformat(), m] for k, (t, m) in stay.applied.items()})
    values["cancelled"] = json.dumps({k: [c.at.isoformat(), c.message_id] for k, c in stay.cancelled.items()})
    values["updated_at"] = at
    return values


def _values(case: SipCase) -> dict[str, Any]:
    return {
        "id": str(case.id),
        "reference": case.reference,
        "hospital_hsa_id": case.hospital_hsa_id,
        "episode_id": case.episode_id,
        "patient_identifier": case.patient_identifier,
        "is_child": case.is_child,
        "kommun_code": case.kommun_code,
        "owner_hsa_id": case.owner_hsa_id,
        "participants": json.dumps([p.__dict__ for p in case.participants], ensure_ascii=False),
        "state": case.state,
        "opened_at": case.opened_at,
        "ready_for_discharge_at": case.ready_for_discharge_at,
        "invitation_due_at": case.invitation_due_at,
        "correlation_id": case.correlation_id,
        "consent_id": str(case.consent_id) if case.consent_id else None,
        "invited_at": case.invited_at,
        "suspended_from": case.suspended_from,
        "closed_reason": case.closed_reason,
        "origin": case.origin,
        "proposed_by": case.proposed_by,
        "external_id": case.external_id,
        "details": _details_out(case),
        "follow_up_date": case.follow_up_date,
        "guardians": json.dumps(list(case.guardian_identifiers)),
    }


def upgrade_schema(sync_conn: sa.Connection) -> None:
    """SQLite: add the columns newer than an existing ``sip_cases`` table (additive, idempotent; run
    after ``create_all``). PostgreSQL is migrated by Alembic (``services/planning/migrations``)."""
    inspector = sa.inspect(sync_conn)
    if "sip_cases" not in inspector.get_table_names():
        return
    have = {c["name"] for c in inspector.get_columns("sip_cases")}
    for name in ("guardians",):
        if name not in have:
            ddl = cases.c[name].type.compile(dialect=sync_conn.dialect)
            sync_conn.execute(sa.text(f'ALTER TABLE sip_cases ADD COLUMN "{name}" {ddl}'))
    if "hospital_stays" in inspector.get_table_names():  # migration 0005_hot_query_indexes
        have = {c["name"] for c in inspector.get_columns("hospital_stays")}
        for index in stays.indexes:
            if set(index.columns.keys()) <= have:
                index.create(sync_conn, checkfirst=True)
    intake = metadata.tables.get("intake_messages")
    if intake is None or "intake_messages" not in inspector.get_table_names():
        return
    have = {c["name"] for c in inspector.get_columns("intake_messages")}
    for name in ("status", "status_reason", "correlation_id", "patient_identifier", "effect", "replay_of"):
        if name not in have:  # the message store (migration 0003)
            ddl = intake.c[name].type.compile(dialect=sync_conn.dialect)
            default = " NOT NULL DEFAULT 'accepted'" if name == "status" else ""
            sync_conn.execute(sa.text(f'ALTER TABLE intake_messages ADD COLUMN "{name}" {ddl}{default}'))
    if "status" not in have:
        sync_conn.execute(sa.text(
            "UPDATE intake_messages SET status = 'refused', status_reason = error "
            "WHERE outcome NOT IN ('AA', 'ok')"
        ))  # fmt: skip
    for index in intake.indexes:
        index.create(sync_conn, checkfirst=True)


def related_to(*, hsa_id: str | None = None, person_id: str | None = None) -> Any:
    """A SQL pre-filter: the cases an organisation owns, takes part in or is the hospital of, or the
    cases of a person or of the children a guardian is named for. Over-inclusive where the lists are
    JSON text (a LIKE); the caller checks each row again (``services.planning.access``)."""
    if person_id is not None:
        return sa.or_(cases.c.patient_identifier == person_id, cases.c.guardians.contains(f'"{person_id}"'))
    if hsa_id is not None:
        return sa.or_(
            cases.c.owner_hsa_id == hsa_id,
            cases.c.hospital_hsa_id == hsa_id,
            cases.c.participants.contains(f'"{hsa_id}"'),
        )
    return sa.false()


def related_filter(related: RelatedTo | None) -> Any:
    """The port's :class:`~services.planning.ports.RelatedTo` as the SQL pre-filter (None: none)."""
    if related is None:
        return None
    return related_to(hsa_id=related.hsa_id, person_id=related.person_id)


class SqlCaseRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        #: SQLite: case id → its latest plan version (0: none), read with the case for update
        self._latest_plan: dict[str, int] = {}

    async def get_stay(self, hospital_id: str, stay_id: str, *, for_update: bool = False) -> Stay | None:
        q = stays.select().where(stays.c.hospital_id == hospital_id, stays.c.stay_id == stay_id)
        row = (await self.conn.execute(q.with_for_update() if for_update else q)).first()
        return _stay(row) if row else None

    async def save_stay(self, stay: Stay, at: datetime, *, new: bool) -> None:
        values = _stay_values(stay, at)
        if new:
            await self.conn.execute(_INSERT_STAY, values)
        else:
            await self.conn.execute(
                _UPDATE_STAY, {**values, "k_hospital_id": stay.hospital_id, "k_stay_id": stay.stay_id}
            )

    async def list_stays(self, limit: int = 200, *, hospital_id: str | None = None) -> list[Stay]:
        """The newest stays; ``hospital_id``: only that hospital's (filtered before the limit)."""
        q = stays.select().order_by(stays.c.updated_at.desc()).limit(limit)
        if hospital_id is not None:
            q = q.where(stays.c.hospital_id == hospital_id)
        return [_stay(r) for r in await self.conn.execute(q)]

    async def add_case(self, case: SipCase) -> None:
        await self.conn.execute(_INSERT_CASE, _values(case))

    async def get_case(self, case_id: UUID, *, for_update: bool = False) -> SipCase | None:
        """``for_update``: the read that starts a change of the case. On PostgreSQL it locks the case's
        row until the transaction ends, so two changes of one case (three participants' InvitationSent
        arriving together, a coordinator's command beside a hospital event) take turns instead of
        overwriting each other or colliding on the next plan version; SQLite's one write lock already
        does that — and there the case's latest plan version is read with it (one statement less
        for the plan version the change writes)."""
        key = str(case_id)
        if for_update and self.conn.dialect.name == "sqlite":
            row = (await self.conn.execute(_GET_CASE_WITH_PLAN_VERSION, {"k_id": key})).first()
            if row is None:
                return None
            self._latest_plan[key] = int(row.sip_latest_plan_version or 0)
            return _case(row)
        q = _GET_CASE_FOR_UPDATE if for_update else _GET_CASE
        row = (await self.conn.execute(q, {"k_id": key})).first()
        return _case(row) if row else None

    async def update_case(self, case: SipCase) -> None:
        await self.conn.execute(_UPDATE_CASE, {**_values(case), "k_id": str(case.id)})

    async def open_cases(
        self, include_closed: bool = False, *, where: Any = None, related: RelatedTo | None = None
    ) -> list[SipCase]:
        """``where``: a pre-filter such as :func:`related_to`; ``related``: the same as a port value."""
        q = cases.select().order_by(cases.c.invitation_due_at, cases.c.opened_at)
        for clause in (where, related_filter(related)):
            if clause is not None:
                q = q.where(clause)
        if not include_closed:
            q = q.where(cases.c.state.in_(sorted(OPEN_STATES)))
        return [_case(r) for r in await self.conn.execute(q)]

    async def next_plan_version(self, case_id: UUID) -> int:
        latest = self._latest_plan.get(str(case_id))
        if latest is not None:  # SQLite, read with the case in this transaction (see get_case)
            return latest + 1
        current = await self.conn.scalar(_NEXT_PLAN_VERSION, {"k_case_id": str(case_id)})
        return int(current or 0) + 1

    async def add_plan_version(
        self, case: SipCase, version: int, at: datetime, *, validate: bool = True, activity: str = "UPDATE",
        agent_hsa_id: str | None = None, reason: str | None = None,
    ) -> None:  # fmt: skip
        """The case as plan ``version``: its CarePlan (:func:`~services.planning.fhir.care_plan`;
        ``validate=False`` skips the fhir.resources round trip), its snapshot and the Provenance."""
        case_id = case.id
        resource = care_plan(case, version=version, at=at, validate=validate)
        await self.conn.execute(
            _INSERT_PLAN,
            {
                "case_id": str(case_id),
                "version": version,
                "resource": json.dumps(resource),
                "recorded_at": at,
                "snapshot": case_snapshot(case),
                "activity": activity,
                "agent_hsa_id": agent_hsa_id,
                "reason": reason,
            },
        )
        key = str(case_id)
        if key in self._latest_plan:
            self._latest_plan[key] = max(self._latest_plan[key], version)

    async def latest_plan(self, case_id: UUID) -> dict[str, Any] | None:
        row = await self.plan_version(case_id)
        return json.loads(row.resource) if row else None

    async def plan_version(self, case_id: UUID, version: int | None = None) -> Any | None:
        """One stored version (the latest when ``version`` is None): resource, snapshot, provenance."""
        q = care_plans.select().where(care_plans.c.case_id == str(case_id))
        q = (
            q.order_by(care_plans.c.version.desc()).limit(1)
            if version is None
            else q.where(care_plans.c.version == version)
        )
        return (await self.conn.execute(q)).first()

    async def plan_versions(self, case_id: UUID) -> list[Any]:
        q = (
            care_plans.select()
            .where(care_plans.c.case_id == str(case_id))
            .order_by(care_plans.c.version.desc())
        )
        return list((await self.conn.execute(q)).all())

    async def find_cases(
        self, *, patient: str | None = None, reference: str | None = None, states: set[str] | None = None,
        external_id: str | None = None,
        created_from: datetime | None = None, created_to: datetime | None = None, limit: int | None = 100,
        where: Any = None, related: RelatedTo | None = None, with_plan: bool = False,
    ) -> list[SipCase]:  # fmt: skip
        """``where``: a pre-filter such as :func:`related_to`, applied before the limit (``related``: the
        same as a port value); ``with_plan``: only cases that have a CarePlan (a version stored)."""
        q = cases.select().order_by(cases.c.opened_at.desc(), cases.c.id)
        if limit is not None:
            q = q.limit(limit)
        for clause in (where, related_filter(related)):
            if clause is not None:
                q = q.where(clause)
        if with_plan:
            q = q.where(sa.exists().where(care_plans.c.case_id == cases.c.id))
        if patient is not None:
            q = q.where(cases.c.patient_identifier == patient)
        if reference is not None:
            q = q.where(cases.c.reference == reference)
        if external_id is not None:
            q = q.where(cases.c.external_id == external_id)
        if states is not None:
            q = q.where(cases.c.state.in_(sorted(states)))
        if created_from is not None:
            q = q.where(cases.c.opened_at >= created_from)
        if created_to is not None:
            q = q.where(cases.c.opened_at < created_to)
        return [_case(r) for r in await self.conn.execute(q)]

    async def invited_recipients(self, case_id: UUID) -> list[str]:
        q = sa.select(invitations.c.recipient_hsa_id).where(invitations.c.case_id == str(case_id)).distinct()
        return sorted((await self.conn.execute(q)).scalars().all())

    async def record_invitation(self, case_id: UUID, recipient: str, channel: str, sent_at: datetime) -> bool:
        """True when this recorded it; False when it was recorded before (the first time counts)."""
        values = {
            "case_id": str(case_id), "recipient_hsa_id": recipient, "channel": channel, "sent_at": sent_at,
        }  # fmt: skip
        inserted = await insert_once(self.conn, invitations, values)  # one statement where it can be
        if inserted is not None:
            return inserted
        exists = await self.conn.scalar(
            sa.select(sa.func.count())
            .select_from(invitations)
            .where(
                invitations.c.case_id == str(case_id),
                invitations.c.recipient_hsa_id == recipient,
                invitations.c.channel == channel,
            )
        )
        if exists:
            return False
        await self.conn.execute(_INSERT_INVITATION, values)
        return True
