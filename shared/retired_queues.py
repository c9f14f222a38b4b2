"""Queues an earlier version subscribed to and this one no longer does (:data:`shared.topology.RETIRED`):
what waits in them is handled, then they are deleted.

A subscription is retired when a service starts handling those messages another way (planning reacts
to its own breached deadlines in-process since 2026-12). A deployment upgraded from an earlier version
still has the queue, bound to its exchange: without this, it would fill with every later message for
ever, and what waited in it at the upgrade would never be handled.

:func:`drain_retired` runs in the service's background (``app.py``): for each retired queue of the
service that exists, it takes the messages one by one (``basic.get``) and hands each to ``handle``
(which takes it through the inbox under the old consumer name, so a message the earlier version had
already handled has no second effect), acknowledging after ``handle`` returned. A handler error puts
the message back and waits; a :class:`~shared.errors.PermanentError` rejects it into the queue's own
dead-letter queue. Once the queue and its retry queue are empty and nothing consumes the queue (an
earlier version's replica in a rolling update does), it deletes the queue and its retry queue, and the
dead-letter queue too if empty (else it says so once: an operator decides what to do with those).

The binding stays until the delete, so a replica of the earlier version that still runs keeps
reaching the queue. A message routed in the moment between the last look and the delete is lost to
this service; it can only come from this version's own publishing (whose effect it already made
in-process) or from an earlier version's replica that has stopped consuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection

from shared.broker_failover import connect_failover
from shared.contracts import Contract
from shared.errors import PermanentError
from shared.topology import Subscription, retired_of

__all__ = ["drain_one", "drain_retired"]

log = logging.getLogger("sip.topology")

Handle = Callable[[Contract], Awaitable[None]]


async def drain_retired(
    urls: str | list[str], service: str, handle: Handle, *, interval: float = 5.0
) -> None:
    """Drain and delete every retired queue of ``service`` (returns when none is left)."""
    pending = list(retired_of(service))
    while pending:
        try:
            connection = await connect_failover(urls)
        except Exception:  # the broker is away: the service's own monitor says so; try again later
            await asyncio.sleep(interval)
            continue
        try:
            async with connection:
                for sub in list(pending):
                    if await drain_one(connection, sub, handle):
                        pending.remove(sub)
        except aio_pika.exceptions.AMQPError:
            pass  # a connection lost mid-way: the next round starts over
        except Exception as exc:  # the handler's dependency (the database) is away: wait, try again
            log.warning("a retired queue's message could not be handled yet; will retry",
                        extra={"error": type(exc).__name__})  # fmt: skip
        if pending:
            await asyncio.sleep(interval)


async def drain_one(connection: AbstractConnection, sub: Subscription, handle: Handle) -> bool:
    """One round on ``sub``'s old queue: handle what waits, delete it if it is done. True: it is gone."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(sub.queue_name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return True  # never there (a new installation), or deleted already
    while True:
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        try:
            await handle(sub.contract.model_validate_json(message.body))
        except PermanentError as exc:
            log.warning("a message of a retired queue cannot be handled; dead-lettered",
                        extra={"queue": sub.queue_name, "reason": str(exc)})  # fmt: skip
            await message.reject(requeue=False)
        except Exception:
            await message.nack(requeue=True)
            raise
        else:
            await message.ack()
    return await _delete_if_done(connection, channel, sub)


async def _delete_if_done(
    connection: AbstractConnection, channel: AbstractChannel, sub: Subscription
) -> bool:
    work = await channel.declare_queue(sub.queue_name, passive=True)
    result = work.declaration_result
    if result.message_count or result.consumer_count:
        return False  # more arrived, or an earlier version's replica still consumes it
    with contextlib.suppress(aio_pika.exceptions.ChannelNotFoundEntity):
        retry = await (await connection.channel()).declare_queue(sub.retry_queue_name, passive=True)
        if retry.declaration_result.message_count:
            return False  # they come back to the work queue after their delay
    await channel.queue_delete(sub.queue_name)
    with contextlib.suppress(aio_pika.exceptions.ChannelNotFoundEntity):
        await (await connection.channel()).queue_delete(sub.retry_queue_name)
    left = 0
    with contextlib.suppress(aio_pika.exceptions.ChannelNotFoundEntity):
        dlq = await (await connection.channel()).declare_queue(sub.dlq_name, passive=True)
        left = dlq.declaration_result.message_count or 0
        if not left:
            await (await connection.channel()).queue_delete(sub.dlq_name)
    log.warning(
        "retired queue drained and deleted",
        extra={"queue": sub.queue_name, "dead_letters_left": left, "dead_letter_queue": sub.dlq_name},
    )
    return True
