"""RabbitMQ edge of planning: the handler table (:data:`services.planning.handlers.HANDLERS`) made into
subscribers by the shared generic one, and the hospital's two (discharge notice, stay event), which
write their effect or dead letter back to the message store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.planning import handlers, messages
from services.planning.deadlines import DeadlinePolicy
from services.planning.domain import SipCase
from services.planning.handlers import PlanningUnitOfWork
from services.planning.ports import CaseRepository
from services.planning.settings import PlanningSettings
from shared.clock import Clock
from shared.contracts import DischargeNotified, HospitalStayEvent
from shared.directory import Directory
from shared.errors import PermanentError
from shared.handler_table import register_handlers
from shared.hospital import HospitalEvent
from shared.runtime import ServiceRuntime
from shared.topology import contract_exchange, subscription, work_queue


class HospitalWork(PlanningUnitOfWork, Protocol):
    """The SQL unit of work as the hospital's two subscribers need it: they also write the message
    store (``store``) on its connection, in the same transaction as the effect."""

    @property
    def conn(self) -> AsyncConnection: ...


@dataclass(frozen=True)
class MessageHandlers:
    """What the broker calls per stay event and per AMQP discharge notice (for tests and tools)."""

    stay_event: Callable[[HospitalStayEvent], Awaitable[None]]
    discharge: Callable[[DischargeNotified], Awaitable[None]]


def register(
    runtime: ServiceRuntime,
    settings: PlanningSettings,
    directory: Directory,
    clock: Clock,
    uow: Callable[[], HospitalWork],
    store: sa.Table,
) -> MessageHandlers:
    """Subscribe the handler table (each message in a unit of work from ``uow``) and the hospital's
    two (``store``: the message store's table); returns those two (what the broker calls per message)."""
    broker = runtime.broker
    register_handlers(runtime, handlers.HANDLERS, uow)
    discharge = subscription("planning", DischargeNotified)
    stay_event = subscription("planning", HospitalStayEvent)
    policy = DeadlinePolicy.from_settings(settings)

    @broker.subscriber(
        work_queue(discharge), contract_exchange(DischargeNotified), title=discharge.queue_name
    )
    async def on_discharge(msg: DischargeNotified) -> None:
        await handle_discharge_message(msg)

    async def handle_discharge_message(msg: DischargeNotified) -> None:
        """The AMQP discharge notice, stored in the message store with its effect (or dead letter)."""
        row: int | None = None
        try:
            async with uow() as work:
                if await work.first_time(discharge.queue_name, str(msg.message_id)):
                    row = await messages.store_amqp(work.conn, store, msg, clock.now())
                    case = await handlers.handle_discharge(
                        msg, repo=work.cases, outbox=work, directory=directory, clock=clock,
                        deadlines=work.deadlines, policy=policy,
                    )  # fmt: skip
                    ev = handlers.discharge_event(msg)
                    await _effect(work.conn, work.cases, ev, case, message_id=row)
        except PermanentError as exc:
            await _dead_lettered(exc, message_id=None, amqp=msg)
            raise

    @broker.subscriber(
        work_queue(stay_event), contract_exchange(HospitalStayEvent), title=stay_event.queue_name
    )
    async def on_stay_event(msg: HospitalStayEvent) -> None:
        await handle_stay_message(msg)

    async def handle_stay_message(msg: HospitalStayEvent) -> None:
        """One stay event of a stored message; its effect (or dead letter) written back to the store."""
        try:
            async with uow() as work:
                if await work.first_time(stay_event.queue_name, str(msg.message_id)):
                    case = await handlers.handle_stay_event(
                        msg.event, repo=work.cases, outbox=work, directory=directory, clock=clock,
                        deadlines=work.deadlines, policy=policy,
                        assume_sip_needed=settings.intake_assume_sip_needed,
                        correlation_id=msg.correlation_id,
                    )  # fmt: skip
                    await _effect(work.conn, work.cases, msg.event, case, correlation_id=msg.correlation_id)
        except PermanentError as exc:
            await _dead_lettered(exc, message_id=msg.correlation_id, amqp=None)
            raise

    async def _effect(
        conn: AsyncConnection, repo: CaseRepository, ev: HospitalEvent, case: SipCase | None, **where: Any
    ) -> None:
        stay = await repo.get_stay(ev.hospital_id or "", ev.stay_id)
        effect = {
            "hospital_id": ev.hospital_id, "stay_id": ev.stay_id,
            "case_id": str(case.id) if case is not None else (stay.case_id if stay else None),
            "note": stay.note if stay else None,
        }  # fmt: skip
        await messages.mark(
            conn, store, status="effected" if case is not None else "accepted", effect=effect, **where
        )

    async def _dead_lettered(
        exc: Exception, *, message_id: str | None, amqp: DischargeNotified | None
    ) -> None:
        """The event was refused for good (dead-lettered with the reason): say so in the store."""
        async with runtime.engine.begin() as conn:
            if amqp is not None:
                row = await messages.store_amqp(conn, store, amqp, clock.now())
                await messages.mark(
                    conn, store, message_id=row, status="dead-lettered", reason=str(exc)[:500]
                )
            else:
                await messages.mark(
                    conn, store, correlation_id=message_id, status="dead-lettered", reason=str(exc)[:500]
                )

    return MessageHandlers(stay_event=handle_stay_message, discharge=handle_discharge_message)
