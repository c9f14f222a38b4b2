"""RabbitMQ edge of planning: translate a message, call a handler, inside one unit of work."""

from __future__ import annotations

from services.planning import handlers
from services.planning.adapters.store import SqlCaseRepository
from services.planning.settings import PlanningSettings
from shared.clock import Clock
from shared.contracts import (
    ConsentDeclined,
    ConsentGranted,
    DischargeNotified,
    HospitalStayEvent,
    InvitationSent,
)
from shared.directory import Directory
from shared.runtime import ServiceRuntime
from shared.topology import contract_exchange, subscription, work_queue


def register(runtime: ServiceRuntime, settings: PlanningSettings, directory: Directory, clock: Clock) -> None:
    broker = runtime.broker
    discharge = subscription("planning", DischargeNotified)
    stay_event = subscription("planning", HospitalStayEvent)
    granted = subscription("planning", ConsentGranted)
    declined = subscription("planning", ConsentDeclined)
    sent = subscription("planning", InvitationSent)

    @broker.subscriber(
        work_queue(discharge), contract_exchange(DischargeNotified), title=discharge.queue_name
    )
    async def on_discharge(msg: DischargeNotified) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(discharge.queue_name, str(msg.message_id)):
                await handlers.handle_discharge(
                    msg, repo=SqlCaseRepository(uow.conn), outbox=uow, directory=directory, clock=clock,
                    deadline_days=settings.invitation_deadline_days,
                )  # fmt: skip

    @broker.subscriber(
        work_queue(stay_event), contract_exchange(HospitalStayEvent), title=stay_event.queue_name
    )
    async def on_stay_event(msg: HospitalStayEvent) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(stay_event.queue_name, str(msg.message_id)):
                await handlers.handle_stay_event(
                    msg.event, repo=SqlCaseRepository(uow.conn), outbox=uow, directory=directory,
                    clock=clock, deadline_days=settings.invitation_deadline_days,
                    assume_sip_needed=settings.intake_assume_sip_needed, correlation_id=msg.correlation_id,
                )  # fmt: skip

    @broker.subscriber(work_queue(granted), contract_exchange(ConsentGranted), title=granted.queue_name)
    async def on_consent_granted(msg: ConsentGranted) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(granted.queue_name, str(msg.message_id)):
                await handlers.handle_consent_granted(
                    msg, repo=SqlCaseRepository(uow.conn), outbox=uow, clock=clock,
                    public_base_url=settings.public_base_url,
                )  # fmt: skip

    @broker.subscriber(work_queue(declined), contract_exchange(ConsentDeclined), title=declined.queue_name)
    async def on_consent_declined(msg: ConsentDeclined) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(declined.queue_name, str(msg.message_id)):
                await handlers.handle_consent_declined(msg, repo=SqlCaseRepository(uow.conn))

    @broker.subscriber(work_queue(sent), contract_exchange(InvitationSent), title=sent.queue_name)
    async def on_invitation_sent(msg: InvitationSent) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(sent.queue_name, str(msg.message_id)):
                await handlers.handle_invitation_sent(msg, repo=SqlCaseRepository(uow.conn), clock=clock)
