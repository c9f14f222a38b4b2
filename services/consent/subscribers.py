"""RabbitMQ edge of consent: translate a message, call a handler, inside one unit of work."""

from __future__ import annotations

from services.consent import handlers
from services.consent.adapters.store import SqlConsentRepository
from shared.clock import Clock
from shared.contracts import ConsentRequested, RecordConsent
from shared.runtime import ServiceRuntime
from shared.topology import contract_exchange, subscription, work_queue


def register(runtime: ServiceRuntime, clock: Clock) -> None:
    broker = runtime.broker
    requested = subscription("consent", ConsentRequested)
    record = subscription("consent", RecordConsent)

    @broker.subscriber(work_queue(requested), contract_exchange(ConsentRequested), title=requested.queue_name)
    async def on_consent_requested(msg: ConsentRequested) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(requested.queue_name, str(msg.message_id)):
                await handlers.request_consent(msg, repo=SqlConsentRepository(uow.conn), clock=clock)

    @broker.subscriber(work_queue(record), contract_exchange(RecordConsent), title=record.queue_name)
    async def on_record_consent(msg: RecordConsent) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(record.queue_name, str(msg.message_id)):
                await handlers.record_consent(
                    msg, repo=SqlConsentRepository(uow.conn), outbox=uow, clock=clock
                )
