"""A service's handler table, turned into its RabbitMQ subscribers by one generic subscriber.

Each service keeps a table ``contract → handler`` (``COMMAND_HANDLERS`` and ``EVENT_HANDLERS``, as in
cosmicpython's message bus) whose handlers take the unit of work and the message, nothing else::

    async def send_invitation(uow: NotifyUnitOfWork, cmd: SendInvitation) -> None: ...

:func:`register_handlers` (called by the service's ``app.py``) makes one subscriber per entry, all
the same function: open a unit of work from ``uow_factory``, take the message once through the inbox
(the consumer is the work queue's name), call the handler, commit; then ``after`` (e.g. wake the
dispatcher). The queue, its binding, dead-lettering and retries are the topology's
(:func:`shared.topology.work_queue`, :mod:`shared.messaging`), so every entry behaves as a
hand-written subscriber did. :func:`handle` is that same path without the broker: handler tests
call it with an in-memory unit of work.

The subscriber's AsyncAPI ``description`` is the handler's docstring (continuation lines indented as
they were when the subscribers were functions nested in ``register``, so the generated documents
did not change); a handler without a docstring has none.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shared.contracts import Contract
from shared.runtime import ServiceRuntime
from shared.topology import contract_exchange, subscription, work_queue
from shared.unit_of_work import Handler, HandlerTable, UnitOfWork

__all__ = ["Handler", "HandlerTable", "handle", "handle_once", "register_handlers", "subscriber_description"]

U = TypeVar("U", bound=UnitOfWork)

#: the indentation the AsyncAPI documents carry in a multi-line description
_DOC_INDENT = " " * 8


async def handle(
    service: str,
    table: HandlerTable[U],
    uow_factory: Callable[[], U],
    message: Contract,
) -> bool:
    """Handle ``message`` with its entry in ``table``, once: in one unit of work, the inbox claim (by
    the consumer ``service``'s work queue) and the handler's effect. False: seen before, nothing done.

    An exception from the handler rolls the unit of work back (the inbox claim too) and propagates:
    the subscriber's retry and dead-letter rules take it from there."""
    contract = type(message)
    return await handle_once(
        subscription(service, contract).queue_name, table[contract], uow_factory, message
    )


async def handle_once(
    consumer: str, handler: Handler[U], uow_factory: Callable[[], U], message: Contract
) -> bool:
    """``handler`` on ``message`` in one unit of work with the inbox claim by ``consumer`` (a queue's
    name); False: seen before, nothing done. (:func:`handle`; also for a retired queue's leftovers,
    :mod:`shared.retired_queues`, under the old queue's name.)"""
    async with uow_factory() as uow:
        if not await uow.first_time(consumer, str(message.message_id)):
            return False
        await handler(uow, message)
    return True


def register_handlers(
    runtime: ServiceRuntime,
    table: HandlerTable[U],
    uow_factory: Callable[[], U],
    *,
    after: Callable[[], None] | None = None,
) -> dict[type[Contract], Callable[..., Awaitable[None]]]:
    """One subscriber per entry of ``table`` on ``runtime.broker`` (queue, exchange and title from
    the topology); ``after`` runs once a message is done (handled or seen before), not on an error.
    Returns the subscriber functions by contract."""
    made: dict[type[Contract], Callable[..., Awaitable[None]]] = {}
    for contract, handler in table.items():
        made[contract] = _subscribe(runtime, contract, handler, uow_factory, after)
    return made


def _subscribe(
    runtime: ServiceRuntime,
    contract: type[Contract],
    handler: Handler[U],
    uow_factory: Callable[[], U],
    after: Callable[[], None] | None,
) -> Callable[..., Awaitable[None]]:
    sub = subscription(runtime.service, contract)
    table: dict[type[Contract], Handler[U]] = {contract: handler}

    async def consume(msg: Any) -> None:
        await handle(runtime.service, table, uow_factory, msg)
        if after is not None:
            after()

    # FastStream decodes the body into the parameter's annotation (and documents its schema)
    consume.__annotations__ = {"msg": contract, "return": None}
    consume.__name__ = consume.__qualname__ = f"on_{getattr(handler, '__name__', 'message')}"
    consume.__doc__ = handler.__doc__
    return runtime.broker.subscriber(
        work_queue(sub),
        contract_exchange(contract),
        title=sub.queue_name,
        description=subscriber_description(handler),
    )(consume)


def subscriber_description(handler: Callable[..., Any]) -> str | None:
    """The handler's docstring as the AsyncAPI document shows it (see the module's docstring)."""
    doc = inspect.getdoc(handler) if handler.__doc__ else None
    if not doc:
        return None
    return ("\n" + _DOC_INDENT).join(doc.splitlines())
