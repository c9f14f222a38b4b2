"""Messaging helpers that make the safe RabbitMQ choices once, for every service.

- persistent messages, publisher confirms, ``on_return_raises=True`` (an unroutable message raises
  instead of vanishing), a set prefetch;
- the service's own part of the topology declared at start-up (durable quorum queues, dead-letter
  exchange, delivery limit, at-least-once dead-lettering; :func:`declare_service_topology`); the
  whole topology (:func:`declare_topology`) is for operators and tests;
- a consume middleware that classifies failures: a message that can never succeed (it does not
  parse, fails contract validation, or the handler raises :class:`PermanentError`) goes to the DLQ
  at once with the reason in headers; anything else is retried with a growing delay and dead-lettered
  with its reason once ``max_attempts`` is reached. Poison never blocks a queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

import aio_pika
from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, RejectMessage
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from faststream.rabbit.message import RabbitMessage
from pydantic import ValidationError

from shared.broker_failover import FailoverRabbitBroker, connect_failover
from shared.contracts import COMMAND_EXCHANGES, EVENT_EXCHANGES
from shared.dependencies import DependencyMonitor, describe_unavailable
from shared.errors import PermanentError
from shared.topology import (
    DECISION_REQUEST_TTL_MS,
    DEFAULT_RETRY_DELAY_SECONDS,
    REPLY_QUEUES,
    SUBSCRIPTIONS,
    contract_exchange,
    dead_letter_exchange,
    dead_letter_queue,
    exchange_for,
    exchanges_of,
    reply_queues_of,
    retry_queue,
    subscription_for_queue,
    subscriptions_of,
    work_queue,
)

log = logging.getLogger("sip.messaging")

REASON_HEADER = "x-sip-error"
ERROR_TYPE_HEADER = "x-sip-error-type"


def describe_error(exc: BaseException) -> str:
    """A reason a sender can act on, without echoing input values (they may be personal data)."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = ".".join(str(p) for p in err.get("loc", ())) or "(message)"
            parts.append(f"{loc}: {err.get('msg')}")
        return "contract validation failed: " + "; ".join(parts)
    if isinstance(exc, json.JSONDecodeError):
        return f"body is not JSON: {exc.msg} at position {exc.pos}"
    if isinstance(exc, UnicodeDecodeError):
        return "body is not UTF-8 text"
    text = str(exc) or exc.__class__.__name__
    return text[:1000]


def dead_letter_headers(
    reason: str, exc: BaseException, *, attempts: int, exchange: str, routing_key: str, consumer: str
) -> dict[str, Any]:
    """What a dead letter carries (``sipctl dead-letters`` reads it; replay goes to ``exchange`` with
    ``routing_key``): the consume middleware's and :mod:`shared.local_delivery`'s alike."""
    return {
        REASON_HEADER: reason,
        ERROR_TYPE_HEADER: type(exc).__name__,
        "x-sip-failed-at": datetime.now(UTC).isoformat(),
        "x-sip-attempts": attempts,
        "x-sip-original-exchange": exchange,
        "x-sip-original-routing-key": routing_key,
        "x-sip-consumer": consumer,
    }


def is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, ValidationError | json.JSONDecodeError | UnicodeDecodeError | PermanentError)


def _find_validation_error(exc: BaseException) -> BaseException:
    # fast_depends may wrap the pydantic error; unwrap to classify and describe it.
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        if isinstance(cur, ValidationError):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return exc


def _body_error(body: bytes) -> Exception | None:
    """The JSON/UTF-8 error of a body, if it has one (faststream only decodes JSON by content-type)."""
    try:
        json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return exc
    return None


def retry_delay(attempt: int) -> float:
    """Seconds to wait before handing a transiently failed message back (attempt ≥ 1)."""
    return min(0.2 * 2.0 ** (attempt - 1), 5.0)


PRIOR_ATTEMPTS_HEADER = "x-sip-prior-attempts"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def delivery_attempt(message: RabbitMessage) -> int:
    """Deliveries of this copy from its queue (the quorum queue counts redeliveries)."""
    return _int((message.raw_message.headers or {}).get("x-delivery-count", 0)) + 1


def total_attempts(message: RabbitMessage) -> int:
    """All attempts so far, including those before the message waited in the retry queue."""
    return _int((message.raw_message.headers or {}).get(PRIOR_ATTEMPTS_HEADER, 0)) + delivery_attempt(message)


def original_routing_key(message: RabbitMessage) -> str:
    headers = message.raw_message.headers or {}
    return str(headers.get("x-sip-original-routing-key") or message.raw_message.routing_key or "")


async def _park_for_retry(
    broker: RabbitBroker, msg: RabbitMessage, retry_queue_name: str, routing_key: str, attempt: int
) -> None:
    """Put a copy in the consumer's retry queue (it comes back after the delay), then ack this one."""
    headers = {
        k: v for k, v in (msg.raw_message.headers or {}).items() if k not in ("x-death", "x-delivery-count")
    }
    headers.update(
        {
            PRIOR_ATTEMPTS_HEADER: attempt,
            "x-sip-original-routing-key": routing_key,
            "x-sip-original-exchange": headers.get("x-sip-original-exchange")
            or msg.raw_message.exchange
            or "",
        }
    )
    await _republish(broker, msg, headers, queue=retry_queue_name)


async def _republish(
    broker: RabbitBroker, msg: RabbitMessage, headers: dict[str, Any], **target: Any
) -> None:
    """Publish a copy of ``msg`` (same body and ids, new headers) — persistent, mandatory, confirmed."""
    await broker.publish(
        msg.body,
        persist=True,
        mandatory=True,
        headers=headers,
        message_id=msg.message_id,
        correlation_id=msg.correlation_id,
        content_type=msg.content_type,
        message_type=msg.raw_message.type,
        **target,
    )


class ConsumeObservation:
    """What became of one delivery; the middleware fills it in, an observer reads it on exit."""

    __slots__ = ("error", "outcome")

    def __init__(self) -> None:
        self.outcome = "error"  # until the middleware knows better (e.g. cancelled at shutdown)
        self.error: BaseException | None = None


class ConsumeObserver(Protocol):
    """Metrics/tracing around each delivery (``shared.runtime`` supplies one)."""

    def consuming(self, queue: str, msg: RabbitMessage) -> AbstractContextManager[ConsumeObservation]: ...


def dead_letter_middleware(
    consumer: str,
    broker_ref: Callable[[], RabbitBroker],
    *,
    max_attempts: int = 5,
    on_dead_letter: Callable[[str, str], Awaitable[None] | None] | None = None,
    observer: ConsumeObserver | None = None,
    dependencies: DependencyMonitor | None = None,
    hold_max_seconds: float = 300.0,
) -> type[BaseMiddleware]:
    """Build the consume middleware for one service (``consumer`` names its dead-letter exchange).

    A delivery whose handler met an unavailable dependency (:mod:`shared.dependencies`: database,
    broker, SMTP down) is neither retried against its budget nor dead-lettered: it is held
    (unacknowledged — with the prefetch, consuming pauses) and run again each time ``dependencies``
    says the dependency may be back, with a backoff growing to ``SIP_DEPENDENCY_BACKOFF_MAX_SECONDS``.
    After ``hold_max_seconds`` (below the broker's consumer timeout) it is parked in the retry queue
    with its attempt count unchanged and comes back later — still never towards the DLQ.
    """

    dlx = dead_letter_exchange(consumer)

    class DeadLetterMiddleware(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            if observer is None:
                return await _handle(call_next, msg, ConsumeObservation())
            with observer.consuming(f"{consumer}.{original_routing_key(msg)}", msg) as seen:
                return await _handle(call_next, msg, seen)

    async def _handle(call_next: Any, msg: Any, seen: ConsumeObservation) -> Any:
        if dependencies is None:
            return await _settle(call_next, msg, seen)
        held_since: float | None = None
        met: set[str] = set()
        while True:
            try:
                result = await call_next(msg)
            except AckMessage:
                seen.outcome = "acked"
                raise
            except RejectMessage:
                seen.outcome = "rejected"
                raise
            except Exception as raw_exc:
                found = describe_unavailable(raw_exc)
                if found is None:
                    for dependency in met:  # it got past the dependency to another error
                        dependencies.up(dependency)
                    return await _settle(_raising(raw_exc), msg, seen)
                dependency, reason = found
                met.add(dependency)
                dependencies.down(dependency, reason)
                loop = asyncio.get_running_loop()
                held_since = loop.time() if held_since is None else held_since
                if loop.time() - held_since >= hold_max_seconds:
                    return await _park_held(msg, seen, raw_exc, dependency)
                await dependencies.wait(dependency)
                continue
            for dependency in met:
                dependencies.up(dependency)
            seen.outcome = "ok"
            return result

    async def _park_held(msg: Any, seen: ConsumeObservation, exc: BaseException, dependency: str) -> Any:
        """Held long enough: into the retry queue with the attempt count it came with (no budget spent)."""
        routing_key = original_routing_key(msg)
        sub = subscription_for_queue(f"{consumer}.{routing_key}")
        seen.error = exc
        seen.outcome = "held"
        log.info(
            "message held while a dependency is unavailable; parked in the retry queue",
            extra={"routing_key": routing_key, "message_id": msg.message_id, "dependency": dependency},
        )
        if sub is None:  # no retry queue (request/reply): back to its queue
            raise RejectMessage(requeue=True) from None
        prior = _int((msg.raw_message.headers or {}).get(PRIOR_ATTEMPTS_HEADER, 0))
        await _park_for_retry(broker_ref(), msg, sub.retry_queue_name, routing_key, prior)
        raise AckMessage() from None

    async def _settle(call_next: Any, msg: Any, seen: ConsumeObservation) -> Any:
        try:
            result = await call_next(msg)
            seen.outcome = "ok"
            return result
        except AckMessage:
            seen.outcome = "acked"
            raise
        except RejectMessage:
            seen.outcome = "rejected"
            raise
        except asyncio.CancelledError:
            raise
        except Exception as raw_exc:
            exc = _find_validation_error(raw_exc)
            attempt = total_attempts(msg)
            routing_key = original_routing_key(msg)
            if not is_permanent(exc) and attempt < max_attempts:
                immediate = delivery_attempt(msg) == 1
                log.warning(
                    "transient failure, will retry",
                    extra={
                        "routing_key": routing_key,
                        "message_id": msg.message_id,
                        "attempt": attempt,
                        "retry": "immediate" if immediate else "delayed",
                        "error_type": type(exc).__name__,
                    },
                )
                seen.error = exc
                if immediate:
                    # reject(requeue) counts toward the quorum delivery limit on every version
                    seen.outcome = "retried"
                    raise RejectMessage(requeue=True) from None
                sub = subscription_for_queue(f"{consumer}.{routing_key}")
                if sub is not None:
                    await _park_for_retry(broker_ref(), msg, sub.retry_queue_name, routing_key, attempt)
                    seen.outcome = "retried"
                    raise AckMessage() from None
                await asyncio.sleep(retry_delay(attempt))
                seen.outcome = "retried"
                raise RejectMessage(requeue=True) from None
            reason = describe_error(_body_error(msg.body) or exc)
            headers = dict(msg.raw_message.headers or {})
            headers.update(
                dead_letter_headers(
                    reason,
                    exc,
                    attempts=attempt,
                    exchange=(msg.raw_message.headers or {}).get("x-sip-original-exchange")
                    or msg.raw_message.exchange
                    or "",
                    routing_key=routing_key,
                    consumer=consumer,
                )
            )
            # publish (confirmed) first, then ack: a crash in between gives a duplicate
            # dead letter, never a lost message.
            await _republish(broker_ref(), msg, headers, exchange=dlx, routing_key=routing_key)
            seen.outcome, seen.error = "dead_lettered", exc
            log.error(
                "message dead-lettered",
                extra={
                    "routing_key": routing_key,
                    "message_id": msg.message_id,
                    "attempt": attempt,
                    "error_type": type(exc).__name__,
                    "reason": reason,
                },
            )
            if on_dead_letter is not None:
                res = on_dead_letter(routing_key, reason)
                if asyncio.iscoroutine(res):
                    await res
            raise AckMessage() from None

    async def _raise(exc: BaseException) -> Any:
        raise exc

    def _raising(exc: BaseException) -> Callable[[Any], Awaitable[Any]]:
        return lambda _msg: _raise(exc)

    DeadLetterMiddleware.__name__ = f"DeadLetterMiddleware[{consumer}]"
    return DeadLetterMiddleware


def make_broker(
    *,
    service: str,
    amqp_url: str,
    prefetch: int = 32,
    max_attempts: int = 5,
    graceful_timeout: float = 15.0,
    observer: ConsumeObserver | None = None,
    dependencies: DependencyMonitor | None = None,
    hold_max_seconds: float = 300.0,
) -> RabbitBroker:
    """The one way a service builds its broker. Nothing connects until ``broker.start()``.

    ``amqp_url`` may name several nodes of a cluster, comma separated (:mod:`shared.broker_failover`):
    the broker connects to the first that answers and reconnects to the next when its node goes."""
    holder: dict[str, RabbitBroker] = {}
    broker = FailoverRabbitBroker(
        amqp_url,
        default_channel=Channel(
            prefetch_count=prefetch,
            publisher_confirms=True,
            on_return_raises=True,
        ),
        app_id=service,
        graceful_timeout=graceful_timeout,
        middlewares=(
            dead_letter_middleware(
                service,
                lambda: holder["b"],
                max_attempts=max_attempts,
                observer=observer,
                dependencies=dependencies,
                hold_max_seconds=hold_max_seconds,
            ),
        ),
        logger=logging.getLogger(f"sip.{service}.broker"),
        description=f"sip-suite {service} service",
    )
    holder["b"] = broker
    return broker


async def declare_service_topology(
    broker: RabbitBroker, service: str, retry_delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS
) -> None:
    """Declare what ``service`` needs, and nothing of another service's (what every service does at
    start; its broker user may do no more, see deploy/rabbitmq/generate_definitions.py):

    - every exchange it publishes to or binds from (:func:`shared.topology.exchanges_of`), actively:
      declaring an existing exchange with the same arguments is a no-op, and a service that is the
      first one up on an empty vhost creates them, so no start order is needed;
    - its dead-letter exchange, and per subscription its work queue (bound to the contract's
      exchange), DLQ (bound to the dead-letter exchange) and retry queue;
    - its request/reply queues (:data:`shared.topology.REPLY_QUEUES`: consent's decision queue),
      replacing a classic queue of that name that an earlier version left (:func:`declare_reply_queue`).

    Another consumer's queues are not declared: a command for a consumer that never ran is unroutable
    (the outbox keeps it and retries), so the whole topology is pre-created where that matters
    (deploy/rabbitmq/definitions.json; :func:`declare_topology` elsewhere)."""
    exchanges = {name: await broker.declare_exchange(exchange_for(name)) for name in exchanges_of(service)}
    dlx = await broker.declare_exchange(dead_letter_exchange(service))
    for sub in subscriptions_of(service):
        source = exchanges[sub.contract.exchange]  # binds_from: among exchanges_of
        queue = await broker.declare_queue(work_queue(sub))
        await queue.bind(source, routing_key=sub.contract.routing_key)
        dlq = await broker.declare_queue(dead_letter_queue(sub))
        await dlq.bind(dlx, routing_key=sub.contract.routing_key)
        await broker.declare_queue(retry_queue(sub, retry_delay_seconds))
    for reply in reply_queues_of(service):
        await declare_reply_queue(broker, reply.queue())


async def declare_reply_queue(broker: RabbitBroker, queue: RabbitQueue) -> None:
    """A request/reply queue of :data:`shared.topology.REPLY_QUEUES` (consent's decision queue,
    :func:`shared.topology.decision_queue`); a classic queue of that name, left by a version before
    2026-12, is replaced (:func:`replace_classic_queue`). Its binding is its consumer's (faststream)."""
    try:
        await broker.declare_queue(queue)
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        if "x-queue-type" not in str(exc):
            raise  # another difference in arguments: a real misconfiguration, say so
        await replace_classic_queue(broker, queue)
        await broker.declare_queue(queue)


async def replace_classic_queue(
    broker: RabbitBroker, queue: RabbitQueue, *, drain_seconds: float = DECISION_REQUEST_TTL_MS / 1000 + 5
) -> None:
    """Replace a classic queue named as ``queue`` by the quorum queue ``queue`` (a queue's type cannot
    change in place): delete it once it is empty, then declare ``queue``.

    Made for the decision queue: what waits in the old queue are requests that expire within their
    TTL (their callers have given up by then and fail closed), so the old queue is deleted when empty,
    and after ``drain_seconds`` even if not. A request published in the moment between the delete and
    the declare is unroutable and returned to its caller (mandatory), who asks again. Replicas starting
    together are fine: whoever comes second finds the quorum queue. Runs on a connection of its own,
    so that a refused operation never closes a channel faststream uses."""
    urls = list(getattr(broker, "broker_urls", None) or [str(broker._connection_kwargs["url"])])
    arguments = dict(queue.arguments or {})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_seconds
    replaced = False
    while True:
        connection = await connect_failover(urls)
        try:
            while True:
                channel = await connection.channel()
                try:
                    await channel.declare_queue(queue.name, durable=True, arguments=arguments)
                except aio_pika.exceptions.ChannelPreconditionFailed:
                    pass  # still the classic queue
                else:
                    if replaced:
                        log.warning("classic queue replaced by a quorum queue", extra={"queue": queue.name})
                    return
                channel = await connection.channel()
                try:
                    await channel.queue_delete(queue.name, if_empty=loop.time() < deadline)
                    replaced = True
                except aio_pika.exceptions.ChannelPreconditionFailed:
                    await asyncio.sleep(1.0)  # not empty yet: its requests expire within the TTL
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    pass  # gone already
        except aio_pika.exceptions.AMQPConnectionError:
            # RabbitMQ closes the connection on ``if_empty`` for a quorum queue: another replica
            # replaced the classic queue in between; the next declaration finds the quorum queue
            await asyncio.sleep(0.2)
        finally:
            await connection.close()


async def declare_topology(
    broker: RabbitBroker, retry_delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS
) -> None:
    """Declare every exchange, work queue, retry queue, dead-letter exchange and DLQ of the suite.

    For operators and tests (a user with configure on every suite name, e.g. the operator): the
    services declare only their own part (:func:`declare_service_topology`). The exchanges the
    request/reply queues bind from are declared, not the queues (:data:`shared.topology.REPLY_QUEUES`:
    their owner declares them, as in deploy/rabbitmq/definitions.json)."""
    exchanges = {s.contract.exchange for s in SUBSCRIPTIONS} | set(EVENT_EXCHANGES) | set(COMMAND_EXCHANGES)
    exchanges |= {r.request.exchange for r in REPLY_QUEUES}
    for name in sorted(exchanges):
        await broker.declare_exchange(exchange_for(name))
    for sub in SUBSCRIPTIONS:
        source = await broker.declare_exchange(contract_exchange(sub.contract))
        queue = await broker.declare_queue(work_queue(sub))
        await queue.bind(source, routing_key=sub.contract.routing_key)
        dlx = await broker.declare_exchange(dead_letter_exchange(sub.consumer))
        dlq = await broker.declare_queue(dead_letter_queue(sub))
        await dlq.bind(dlx, routing_key=sub.contract.routing_key)
        await broker.declare_queue(retry_queue(sub, retry_delay_seconds))


async def declare_topology_at(
    amqp_url: str, retry_delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS
) -> None:
    """Connect as ``amqp_url``'s user, declare the whole topology (:func:`declare_topology`), close."""
    broker = FailoverRabbitBroker(amqp_url, logger=logging.getLogger("sip.topology"))
    await broker.connect()
    try:
        await declare_topology(broker, retry_delay_seconds)
    finally:
        await broker.stop()


async def publish_raw(
    broker: RabbitBroker,
    *,
    body: bytes,
    exchange: str,
    routing_key: str,
    message_id: str,
    correlation_id: str | None,
    headers: dict[str, Any] | None = None,
    traceparent: str | None = None,
) -> None:
    """Persistent, mandatory, confirmed publish of an already-serialised contract.

    ``traceparent`` (W3C, stored with the outbox row) travels as an AMQP header of that name.
    """
    if traceparent:
        headers = {**(headers or {}), "traceparent": traceparent}
    await broker.publish(
        body,
        exchange=exchange_for(exchange),
        routing_key=routing_key,
        persist=True,
        mandatory=True,
        message_id=message_id,
        correlation_id=correlation_id,
        message_type=routing_key,
        content_type="application/json",
        headers=headers,
        timestamp=datetime.now(UTC),
        timeout=10,  # a broker that does not confirm in time: the outbox keeps the row and retries
    )
