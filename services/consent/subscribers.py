"""RabbitMQ edge of consent: the handler table (:data:`services.consent.handlers.HANDLERS`) made into
subscribers by the shared generic one, and the request/reply decision subscriber.

Consumed: ``consent.request.v1`` (a case needs consent; its owner and participants are kept),
``consent.record.v1`` (record a consent; the command path, for trusted systems — the HTTP path
authorizes from the token), ``consent.access-recorded.v1`` (a read in planning or notify, filed in
the person's audit trail) and the request/reply ``consent.decide.v1``. Each work-queue message is
handled once (inbox); a permanent error dead-letters it with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.rabbit import RabbitResponse
from faststream.rabbit.annotations import RabbitMessage
from pydantic import ValidationError

from services.consent import handlers
from services.consent.domain import AuditEntry, ConsentRecord
from services.consent.handlers import ConsentUnitOfWork
from services.consent.policy import DecisionQuery
from shared.clock import Clock
from shared.contracts import ConsentDecisionReply, ConsentDecisionRequested
from shared.handler_table import register_handlers
from shared.messaging import describe_error
from shared.runtime import ServiceRuntime
from shared.topology import contract_exchange, decision_queue

log = logging.getLogger("sip.consent.decisions")


def register(
    runtime: ServiceRuntime,
    uow: Callable[[], ConsentUnitOfWork],
    *,
    clock: Clock,
    records_of: Callable[[str], Awaitable[list[ConsentRecord]]],
    audit: Callable[[AuditEntry], Awaitable[None]],
) -> None:
    """The work queues from the handler table, each message in a unit of work from ``uow``; the
    decision queue reads the person's consents with ``records_of`` (a connection of its own) and
    writes its audit record with ``audit`` (the group-committing writer) — both chosen in ``app.py``."""
    broker = runtime.broker
    register_handlers(runtime, handlers.HANDLERS, uow)

    queue = decision_queue()

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
                audit=audit,
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
