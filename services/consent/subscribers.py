"""RabbitMQ edge of consent: translate a message, call a handler, inside one unit of work.

Consumed: ``consent.request.v1`` (a case needs consent; its owner and participants are kept),
``consent.record.v1`` (record a consent; the command path, for trusted systems — the HTTP path
authorizes from the token), ``consent.access-recorded.v1`` (a read in planning or notify, filed in
the person's audit trail) and the request/reply ``consent.decide.v1``. Each work-queue message is
handled once (inbox); a permanent error dead-letters it with its reason.
"""

from __future__ import annotations

import logging
from typing import Any

from faststream.rabbit import RabbitResponse
from faststream.rabbit.annotations import RabbitMessage
from pydantic import ValidationError

from services.consent import handlers
from services.consent.adapters.store import AuditWriter, SqlConsentRepository, records_reader
from services.consent.policy import DecisionQuery
from shared.clock import Clock
from shared.contracts import (
    AccessRecorded,
    ConsentDecisionReply,
    ConsentDecisionRequested,
    ConsentRequested,
    RecordConsent,
)
from shared.messaging import describe_error
from shared.runtime import ServiceRuntime
from shared.topology import contract_exchange, decision_queue, subscription, work_queue

log = logging.getLogger("sip.consent.decisions")


def register(runtime: ServiceRuntime, clock: Clock, audit_writer: AuditWriter) -> None:
    broker = runtime.broker
    requested = subscription("consent", ConsentRequested)
    record = subscription("consent", RecordConsent)
    access = subscription("consent", AccessRecorded)

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

    @broker.subscriber(work_queue(access), contract_exchange(AccessRecorded), title=access.queue_name)
    async def on_access_recorded(msg: AccessRecorded) -> None:
        """File a read in planning or notify in the person's audit trail (once per message)."""
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(access.queue_name, str(msg.message_id)):
                await handlers.record_access(msg, repo=SqlConsentRepository(uow.conn))

    queue = decision_queue()
    records_of = records_reader(runtime.engine)

    @broker.subscriber(
        queue,
        contract_exchange(ConsentDecisionRequested),
        title=queue.name,
        description="Request/reply: answers a ConsentDecisionRequested with a ConsentDecisionReply",
    )
    async def on_decision_request(message: RabbitMessage) -> RabbitResponse:
        """Decide and audit; always answer (a bad request gets ``invalid-request``, never a DLQ)."""
        return _reply(await _decide(message))

    async def _decide(message: Any) -> ConsentDecisionReply:
        try:
            req = ConsentDecisionRequested.model_validate_json(message.body)
        except (ValidationError, ValueError) as exc:
            detail = describe_error(exc) if isinstance(exc, ValidationError) else "body is not a JSON object"
            return ConsentDecisionReply(
                decision="deny", reason="invalid-request", basis="none", detail=detail
            )
        at = req.at or clock.now()
        query = DecisionQuery(
            patient_identifier=req.patient_identifier,
            recipient=req.recipient_hsa_id,
            category=req.category,
            purpose=req.purpose,
            at=at,
            case_id=req.case_id,
        )
        try:
            result, audit_id = await handlers.decide_and_audit(
                query,
                records_of=records_of,
                audit=audit_writer.write,
                clock=clock,
                channel="amqp",
                requested_by=req.requested_by,
                correlation_id=req.correlation_id,
            )
        except Exception as exc:  # answer rather than leave the caller waiting; it fails closed
            # no traceback: database errors can carry bound parameters (personal data)
            log.error(
                "decision failed", extra={"message_id": str(req.message_id), "error_type": type(exc).__name__}
            )
            return ConsentDecisionReply(
                decision="deny",
                reason="consent-service-error",
                basis="none",
                request_message_id=req.message_id,
                detail=type(exc).__name__,
            )
        return ConsentDecisionReply(
            decision=result.outcome,
            reason=result.reason,
            basis=result.basis,
            consent_id=result.consent_id,
            audit_event_id=audit_id,
            decided_for=at,
            request_message_id=req.message_id,
        )


def _reply(reply: ConsentDecisionReply) -> RabbitResponse:
    # Not mandatory: RabbitMQ 3.10 returns every mandatory publish to a direct reply-to address as
    # NO_ROUTE even when it was delivered, and a caller that gave up is no reason to fail.
    return RabbitResponse(
        reply.model_dump_json().encode(),
        mandatory=False,
        content_type="application/json",
        message_type="consent.decision-reply.v1",
    )
