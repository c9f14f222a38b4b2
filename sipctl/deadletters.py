"""Dead letters: list them with their reasons, replay chosen ones to where they came from.

Listing takes messages without acknowledging them and closes the channel, which hands them back to
the DLQ unchanged. Replaying publishes a copy (persistent, mandatory, confirmed) to the original
exchange and routing key, and only then acknowledges the dead letter: a crash in between leaves a
duplicate that the consumer's inbox recognises, never a lost message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq

from shared.broker_failover import connect_failover
from shared.messaging import REASON_HEADER
from shared.topology import SUBSCRIPTIONS


@dataclass
class DeadLetter:
    queue: str
    message_id: str | None
    reason: str
    attempts: Any
    failed_at: str | None
    exchange: str
    routing_key: str


def _origin(msg: aio_pika.abc.AbstractIncomingMessage) -> tuple[str, str, str]:
    h = msg.headers or {}
    if REASON_HEADER in h:
        return (
            str(h.get("x-sip-original-exchange", "")),
            str(h.get("x-sip-original-routing-key", "")),
            str(h[REASON_HEADER]),
        )
    deaths: Any = h.get("x-death") or []  # a list of tables (dicts)
    if deaths:  # dead-lettered by the broker itself (delivery limit)
        d = deaths[0]
        keys = d.get("routing-keys") or [msg.routing_key]
        return (
            str(d.get("exchange", "")),
            str(keys[0]),
            f"broker: {d.get('reason')} after {d.get('count')} deliveries",
        )
    return "", msg.routing_key or "", "unknown"


def dlq_names(queue: str | None = None) -> list[str]:
    names = [s.dlq_name for s in SUBSCRIPTIONS]
    if queue:
        wanted = queue if queue.endswith(".dlq") else f"{queue}.dlq"
        if wanted not in names:
            raise SystemExit(f"unknown dead-letter queue {wanted}; known: {', '.join(names)}")
        return [wanted]
    return names


async def list_dead_letters(amqp_url: str, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
    out: list[DeadLetter] = []
    conn = await connect_failover(amqp_url)
    async with conn:
        for name in dlq_names(queue):
            ch = await conn.channel()
            try:
                q = await ch.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                # each service declares only its own queues: one that never ran has no DLQ yet
                if queue:
                    raise
                continue
            count = q.declaration_result.message_count or 0
            for _ in range(min(count, limit)):
                m = await q.get(fail=False, no_ack=False)
                if m is None:
                    break
                exchange, rk, reason = _origin(m)
                h = m.headers or {}
                out.append(
                    DeadLetter(
                        name,
                        m.message_id,
                        reason,
                        h.get("x-sip-attempts"),
                        str(h.get("x-sip-failed-at")) if h.get("x-sip-failed-at") else None,
                        exchange,
                        rk,
                    )
                )
            await ch.close()  # unacknowledged → back to the DLQ untouched
    return out


async def replay(amqp_url: str, queue: str, message_ids: set[str] | None) -> int:
    """Replay the named messages (all when ``message_ids`` is None). Returns how many."""
    name = dlq_names(queue)[0]
    replayed = 0
    conn = await connect_failover(amqp_url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        q = await ch.declare_queue(name, passive=True)
        count = q.declaration_result.message_count or 0
        held = []
        for _ in range(count):
            m = await q.get(fail=False, no_ack=False)
            if m is None:
                break
            held.append(m)
        for m in held:
            if message_ids is not None and m.message_id not in message_ids:
                continue
            exchange, rk, _ = _origin(m)
            headers = {
                k: v
                for k, v in (m.headers or {}).items()
                if not k.startswith("x-sip-")
                and k
                not in (
                    "x-death",
                    "x-delivery-count",
                    "x-first-death-exchange",
                    "x-first-death-queue",
                    "x-first-death-reason",
                    "x-last-death-exchange",
                    "x-last-death-queue",
                    "x-last-death-reason",
                )
            }
            headers["x-sip-replayed-from"] = name
            target = await ch.get_exchange(exchange) if exchange else ch.default_exchange
            await target.publish(
                aio_pika.Message(
                    m.body,
                    headers=headers,
                    content_type=m.content_type,
                    message_id=m.message_id,
                    correlation_id=m.correlation_id,
                    type=m.type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=rk,
                mandatory=True,
            )
            await m.ack()
            replayed += 1
        await ch.close()
    return replayed
