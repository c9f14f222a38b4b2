"""The suite's RabbitMQ topology, in one place.

Each service declares at start-up only its own part (:func:`shared.messaging.declare_service_topology`;
least privilege: its broker user has no rights on another service's queues): its work queues, their
retry queues and DLQs, its dead-letter exchange, its request/reply queues (:data:`REPLY_QUEUES`), the
bindings of its own queues, and every exchange it publishes to or binds from (:func:`exchanges_of`).
The exchanges are declared *actively* (idempotent, same arguments everywhere), so any service can be
the first one up on an empty vhost.

The whole topology is created before any service starts — from deploy/rabbitmq/definitions.json in
the deployment, by :func:`shared.messaging.declare_topology` (``sipctl declare-topology``, run by
``sipctl run``) elsewhere — so a message published before its consumer has ever run is queued, not
returned or dropped. Without that, a command to a consumer that never ran is unroutable and stays in
the sender's outbox until the consumer has declared its queue, but an *event* that another consumer
already receives is not kept for a consumer that has not yet declared its queue. The request/reply
queues are the exception: only their owner declares them (:class:`ReplyQueue`).
Queue arguments are identical everywhere because they come from here.

Naming (README, "Message catalogue"):
- queue ``<consumer>.<routing key>`` — durable quorum queue, replicas of a consumer share it;
- dead letters ``<consumer>.dlx`` (direct) → ``<queue>.dlq``, bound by the original routing key, so
  both our own dead-lettering (with a reason header) and the broker's (delivery limit) land there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue

from shared.contracts import (
    EVENT_EXCHANGES,
    AccessRecorded,
    CaseNotice,
    ConsentDecisionRequested,
    ConsentDeclined,
    ConsentGranted,
    ConsentRequested,
    ConsentWithdrawn,
    Contract,
    DeadlineBreached,
    DischargeNotified,
    HospitalStayEvent,
    InvitationSent,
    RecordConsent,
    SendInvitation,
)

DELIVERY_LIMIT = 20
"""Broker-side safety net: after this many deliveries the broker dead-letters the message itself."""


@dataclass(frozen=True)
class Subscription:
    consumer: str
    contract: type[Contract]

    @property
    def queue_name(self) -> str:
        return f"{self.consumer}.{self.contract.routing_key}"

    @property
    def dlq_name(self) -> str:
        return f"{self.queue_name}.dlq"

    @property
    def dlx_name(self) -> str:
        return dead_letter_exchange_name(self.consumer)

    @property
    def retry_queue_name(self) -> str:
        return f"{self.queue_name}.retry"


SUBSCRIPTIONS: tuple[Subscription, ...] = (
    Subscription("planning", DischargeNotified),
    Subscription("planning", HospitalStayEvent),
    Subscription("planning", ConsentGranted),
    Subscription("planning", ConsentDeclined),
    Subscription("planning", ConsentWithdrawn),
    Subscription("planning", InvitationSent),
    Subscription("consent", ConsentRequested),
    Subscription("consent", RecordConsent),
    Subscription("consent", AccessRecorded),
    Subscription("notify", SendInvitation),
    Subscription("notify", DeadlineBreached),
    Subscription("notify", ConsentWithdrawn),
    Subscription("notify", CaseNotice),
)


PUBLICATIONS: dict[str, tuple[type[Contract], ...]] = {
    "planning": (
        ConsentRequested,
        SendInvitation,
        DeadlineBreached,
        CaseNotice,
        AccessRecorded,
    ),
    "consent": (ConsentGranted, ConsentDeclined, ConsentWithdrawn),
    "notify": (InvitationSent, AccessRecorded),
}
"""What each service publishes (through its outbox); documented in its AsyncAPI."""

REQUESTS: dict[str, tuple[type[Contract], ...]] = {"planning": (ConsentDecisionRequested,)}
"""Requests a service sends over RabbitMQ request/reply (planning asks the consent gate); who answers
them is :data:`REPLY_QUEUES`."""


def dead_letter_exchange_name(consumer: str) -> str:
    return f"{consumer}.dlx"


def exchange_for(name: str) -> RabbitExchange:
    kind = ExchangeType.TOPIC if name in EVENT_EXCHANGES else ExchangeType.DIRECT
    return RabbitExchange(name, type=kind, durable=True)


def contract_exchange(contract: type[Contract]) -> RabbitExchange:
    return exchange_for(contract.exchange)


def dead_letter_exchange(consumer: str) -> RabbitExchange:
    return RabbitExchange(dead_letter_exchange_name(consumer), type=ExchangeType.DIRECT, durable=True)


def subscription(consumer: str, contract: type[Contract]) -> Subscription:
    for sub in SUBSCRIPTIONS:
        if sub.consumer == consumer and sub.contract is contract:
            return sub
    raise LookupError(f"no subscription {consumer} ← {contract.routing_key} in the topology")


def work_queue(sub: Subscription) -> RabbitQueue:
    return RabbitQueue(
        sub.queue_name,
        queue_type=QueueType.QUORUM,
        durable=True,
        routing_key=sub.contract.routing_key,
        arguments={
            "x-dead-letter-exchange": sub.dlx_name,
            "x-delivery-limit": DELIVERY_LIMIT,
            # at-least-once dead-lettering (RabbitMQ ≥ 3.10) needs reject-publish overflow
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def dead_letter_queue(sub: Subscription) -> RabbitQueue:
    return RabbitQueue(
        sub.dlq_name,
        queue_type=QueueType.QUORUM,
        durable=True,
        routing_key=sub.contract.routing_key,
    )


DEFAULT_RETRY_DELAY_SECONDS = 10.0


def retry_queue(sub: Subscription, delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS) -> RabbitQueue:
    """Where a transiently failed message waits before it goes back to its own work queue.

    Messages expire after ``delay_seconds`` and are dead-lettered through the default exchange
    straight to ``sub.queue_name`` — only this consumer sees the retry, not every queue bound to
    the original exchange.
    """
    return RabbitQueue(
        sub.retry_queue_name,
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments={
            "x-message-ttl": int(delay_seconds * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": sub.queue_name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def subscription_for_queue(queue_name: str) -> Subscription | None:
    for sub in SUBSCRIPTIONS:
        if sub.queue_name == queue_name:
            return sub
    return None


def subscriptions_of(consumer: str) -> tuple[Subscription, ...]:
    return tuple(s for s in SUBSCRIPTIONS if s.consumer == consumer)


RETIRED: tuple[Subscription, ...] = (
    # since 2026-12 planning reacts to its own breached deadlines in the scheduler's transaction
    # (services/planning/scheduler.py); DeadlineBreached stays a public event, for notify
    Subscription("planning", DeadlineBreached),
)
"""Subscriptions of earlier versions: their queues, where an upgrade left them, are drained and
deleted by the service at start (:mod:`shared.retired_queues`); never declared."""


def retired_of(consumer: str) -> tuple[Subscription, ...]:
    return tuple(s for s in RETIRED if s.consumer == consumer)


def publishes_to(service: str) -> tuple[str, ...]:
    """The exchanges ``service`` publishes to (outbox publications and request/reply requests)."""
    contracts = PUBLICATIONS.get(service, ()) + REQUESTS.get(service, ())
    return tuple(sorted({c.exchange for c in contracts}))


def binds_from(service: str) -> tuple[str, ...]:
    """The exchanges ``service``'s work queues and request/reply queues (:data:`REPLY_QUEUES`) are
    bound to."""
    exchanges = {s.contract.exchange for s in subscriptions_of(service)}
    return tuple(sorted(exchanges | {r.request.exchange for r in reply_queues_of(service)}))


def exchanges_of(service: str) -> tuple[str, ...]:
    """The suite exchanges ``service`` declares at start (not counting its own dead-letter exchange)."""
    return tuple(sorted(set(publishes_to(service)) | set(binds_from(service))))


DECISION_REQUEST_TTL_MS = 30_000
"""A decision request nobody took within this time is dropped: its caller has given up by then."""


def decision_queue() -> RabbitQueue:
    """The request/reply queue of the consent gate (``consent.decide.v1``): durable, shared by consent's
    replicas, and a **quorum** queue like every other queue of the suite, so that on a RabbitMQ cluster
    it has a member on each node and the loss of one node stops neither the decisions nor consent's
    other consumers. Requests expire (a caller waits a few seconds, then treats the gate as
    unavailable and fails closed); no dead-lettering: a request is answered or it expires.

    Before 2026-12 this queue was classic; :func:`shared.messaging.declare_service_topology` replaces
    such a queue where it finds one (a queue's type cannot change in place)."""
    return RabbitQueue(
        f"consent.{ConsentDecisionRequested.routing_key}",
        queue_type=QueueType.QUORUM,
        durable=True,
        routing_key=ConsentDecisionRequested.routing_key,
        arguments={"x-message-ttl": DECISION_REQUEST_TTL_MS},
    )


@dataclass(frozen=True)
class ReplyQueue:
    """A request/reply queue: its ``owner`` declares it at start, binds it to the request's exchange,
    consumes it and answers each request on the caller's reply-to; nobody else may touch it (its
    broker permissions, deploy/rabbitmq/generate_definitions.py). Not pre-created with the rest of
    the topology (definitions.json, :func:`shared.messaging.declare_topology`): a request sent before
    its owner ever ran is returned to its caller (mandatory), who fails closed, and an owner that
    finds a queue an earlier version left classic replaces it
    (:func:`shared.messaging.declare_reply_queue`)."""

    owner: str
    request: type[Contract]
    queue: Callable[[], RabbitQueue]

    @property
    def queue_name(self) -> str:
        return f"{self.owner}.{self.request.routing_key}"


REPLY_QUEUES: tuple[ReplyQueue, ...] = (ReplyQueue("consent", ConsentDecisionRequested, decision_queue),)
"""Who answers the requests of :data:`REQUESTS`: the consent gate answers planning's decisions."""


def reply_queues_of(service: str) -> tuple[ReplyQueue, ...]:
    return tuple(r for r in REPLY_QUEUES if r.owner == service)
