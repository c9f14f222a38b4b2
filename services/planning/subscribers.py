"""RabbitMQ edge of planning: translate a message, call a handler, inside one unit of work."""

from __future__ import annotations

from services.planning import handlers
from services.planning.adapters.deadline_store import SqlDeadlines
from services.planning.adapters.store import SqlCaseRepository
from services.planning.deadlines import DeadlinePolicy
from services.planning.settings import PlanningSettings
from shared.clock import Clock
from shared.contracts import (
    ConsentDeclined,
    ConsentGranted,
    ConsentWithdrawn,
    DeadlineBreached,
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
    withdrawn = subscription("planning", ConsentWithdrawn)
    breached = subscription("planning", DeadlineBreached)
    policy = DeadlinePolicy.from_settings(settings)

    @broker.subscriber(
        work_queue(discharge), contract_exchange(DischargeNotified), title=discharge.queue_name
    )
    async def on_discharge(msg: DischargeNotified) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(discharge.queue_name, str(msg.message_id)):
                await handlers.handle_discharge(
                    msg, repo=SqlCaseRepository(uow.conn), outbox=uow, directory=directory, clock=clock,
                    deadlines=SqlDeadlines(uow.conn), policy=policy,
                )  # fmt: skip

    @broker.subscriber(
        work_queue(stay_event), contract_exchange(HospitalStayEvent), title=stay_event.queue_name
    )
    async def on_stay_event(msg: HospitalStayEvent) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(stay_event.queue_name, str(msg.message_id)):
                await handlers.handle_stay_event(
                    msg.event, repo=SqlCaseRepository(uow.conn), outbox=uow, directory=directory,
                    clock=clock, deadlines=SqlDeadlines(uow.conn), policy=policy,
                    assume_sip_needed=settings.intake_assume_sip_needed, correlation_id=msg.correlation_id,
                )  # fmt: skip

    @broker.subscriber(work_queue(granted), contract_exchange(ConsentGranted), title=granted.queue_name)
    async def on_consent_granted(msg: ConsentGranted) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(granted.queue_name, str(msg.message_id)):
                await handlers.handle_consent_granted(
                    msg, repo=SqlCaseRepository(uow.conn), outbox=uow, clock=clock,
                    public_base_url=settings.public_base_url, deadlines=SqlDeadlines(uow.conn), policy=policy,
                )  # fmt: skip

    @broker.subscriber(work_queue(declined), contract_exchange(ConsentDeclined), title=declined.queue_name)
    async def on_consent_declined(msg: ConsentDeclined) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(declined.queue_name, str(msg.message_id)):
                await handlers.handle_consent_declined(
                    msg, repo=SqlCaseRepository(uow.conn), deadlines=SqlDeadlines(uow.conn)
                )

    @broker.subscriber(work_queue(sent), contract_exchange(InvitationSent), title=sent.queue_name)
    async def on_invitation_sent(msg: InvitationSent) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(sent.queue_name, str(msg.message_id)):
                await handlers.handle_invitation_sent(
                    msg,
                    repo=SqlCaseRepository(uow.conn),
                    clock=clock,
                    deadlines=SqlDeadlines(uow.conn),
                    policy=policy,
                )

    @broker.subscriber(work_queue(withdrawn), contract_exchange(ConsentWithdrawn), title=withdrawn.queue_name)
    async def on_consent_withdrawn(msg: ConsentWithdrawn) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(withdrawn.queue_name, str(msg.message_id)):
                await handlers.handle_consent_withdrawn(
                    msg, repo=SqlCaseRepository(uow.conn), clock=clock, deadlines=SqlDeadlines(uow.conn)
                )

    @broker.subscriber(work_queue(breached), contract_exchange(DeadlineBreached), title=breached.queue_name)
    async def on_deadline_breached(msg: DeadlineBreached) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(breached.queue_name, str(msg.message_id)):
                await handlers.handle_deadline_breached(
                    msg, repo=SqlCaseRepository(uow.conn), clock=clock, outbox=uow,
                    public_base_url=settings.public_base_url,
                )  # fmt: skip
