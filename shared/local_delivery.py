"""A service's own work handed from its outbox to its handler in-process, not through RabbitMQ.

Planning's intake (HL7 v2 over MLLP, FHIR ``$process-message``, a replay from the message store)
stores each message with its ACK and, in the same transaction, one ``hospital.stay-event.v1`` row per
event in the outbox marked local (:func:`shared.persistence.enqueue` with ``local=True``). After the
commit the relay hands the row to :class:`LocalDelivery` instead of publishing it to
``hospital.events`` — that exchange stays the hospitals' own — and the handler runs in a
transaction of its own with its inbox claim. So the ACK stays as fast as the commit, and the
follow-up work keeps everything a subscription gives:

- **once**: the handler's inbox claim is by the subscription's queue name, so a row handed over again
  after a crash (its claim expired) or a copy that came through the broker has no second effect;
- **order**: rows are handed over in outbox order, and a failing row holds the ones after it;
- **a sick dependency** (database, broker): the row stays and the relay waits with the dependency's
  backoff; no attempt is counted (:class:`shared.persistence.OutboxRelay`);
- **a bad message** (:func:`shared.messaging.is_permanent`), or one that failed
  ``SIP_MAX_ATTEMPTS`` times: published — confirmed — to the subscription's dead-letter queue with
  the same headers the consume middleware writes (``x-sip-error``, ``x-sip-attempts``, the origin),
  so ``sipctl dead-letters`` lists it and replays it through the contract's exchange to the same
  queue, and the ``sip_dead_letters_total`` alert fires; only then is the row done;
- **metrics and traces** as a delivery: ``sip_messages_consumed_total{queue, outcome}``, and a
  CONSUMER span that continues the intake's trace (the row's ``traceparent``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shared.contracts import Contract
from shared.dependencies import describe_unavailable
from shared.messaging import dead_letter_headers, describe_error, is_permanent, publish_raw
from shared.persistence import LocalRow
from shared.runtime import ServiceRuntime
from shared.topology import dead_letter_exchange_name, subscription

log = logging.getLogger("sip.local_delivery")

LocalHandler = Callable[[Any], Awaitable[None]]


class LocalDelivery:
    """The relay's :attr:`~shared.persistence.OutboxRelay.deliver_locally` for ``runtime``'s service:
    ``handlers`` maps each contract it may hand over to ``async (message) -> None``, the same
    function the contract's subscriber calls (inbox claim and effect in one unit of work)."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        handlers: Mapping[type[Contract], LocalHandler],
        *,
        max_attempts: int,
    ) -> None:
        self._runtime = runtime
        self._by_key = {contract.routing_key: (contract, handler) for contract, handler in handlers.items()}
        self._max_attempts = max_attempts

    def install(self) -> LocalDelivery:
        self._runtime.relay.deliver_locally = self
        return self

    async def __call__(self, row: LocalRow) -> None:
        entry = self._by_key.get(row.routing_key)
        if entry is None:  # a row this version cannot handle: keep it (an operator's matter, logged)
            raise LookupError(f"no local handler for {row.routing_key}")
        contract, handler = entry
        sub = subscription(self._runtime.service, contract)
        attempt = row.attempts + 1
        started = time.perf_counter()
        outcome = "ok"
        with self._runtime.tracing.consume_span(
            queue=sub.queue_name,
            routing_key=row.routing_key,
            message_id=row.message_id,
            correlation_id=row.correlation_id,
            headers={"traceparent": row.traceparent} if row.traceparent else None,
            attempt=attempt,
        ):
            try:
                message = contract.model_validate_json(row.body)
                await handler(message)
            except Exception as exc:
                if describe_unavailable(exc) is not None:
                    outcome = "retried"
                    raise  # the relay waits for the dependency; nothing counted
                if not is_permanent(exc) and attempt < self._max_attempts:
                    outcome = "retried"
                    log.warning(
                        "transient failure, will retry",
                        extra={"routing_key": row.routing_key, "message_id": row.message_id,
                               "attempt": attempt, "error_type": type(exc).__name__},
                    )  # fmt: skip
                    raise
                await self._dead_letter(row, contract, exc, attempt)
                outcome = "dead_lettered"
                self._runtime.metrics.dead_letters.labels(
                    queue=sub.queue_name, error_type=type(exc).__name__
                ).inc()
            finally:
                self._runtime.metrics.observe_consumed(sub.queue_name, outcome, time.perf_counter() - started)

    async def _dead_letter(
        self, row: LocalRow, contract: type[Contract], exc: Exception, attempt: int
    ) -> None:
        """Publish (confirmed) to the subscription's dead-letter queue with the middleware's headers.
        A broker that cannot take it raises: the row stays and is tried again."""
        reason = describe_error(exc)
        service = self._runtime.service
        await publish_raw(
            self._runtime.broker,
            body=row.body.encode(),
            exchange=dead_letter_exchange_name(service),
            routing_key=contract.routing_key,
            message_id=row.message_id,
            correlation_id=row.correlation_id,
            # a replay goes where a broker delivery of the contract goes: to this same queue
            headers=dead_letter_headers(
                reason,
                exc,
                attempts=attempt,
                exchange=contract.exchange,
                routing_key=contract.routing_key,
                consumer=service,
            ),
        )
        log.error(
            "message dead-lettered",
            extra={"routing_key": row.routing_key, "message_id": row.message_id, "attempt": attempt,
                   "error_type": type(exc).__name__, "reason": reason},
        )  # fmt: skip
