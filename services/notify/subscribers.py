"""RabbitMQ edge of notify: the handler table (:data:`services.notify.handlers.table.HANDLERS`) made
into subscribers by the shared generic one, and the consent withdrawal's own subscriber."""

from __future__ import annotations

import logging
from collections.abc import Callable

from services.notify.dispatcher import Dispatcher
from services.notify.handlers.table import HANDLERS, GateTimeout, NotifyUnitOfWork, withdraw
from services.notify.settings import NotifySettings
from shared.contracts import ConsentWithdrawn
from shared.handler_table import register_handlers
from shared.runtime import ServiceRuntime
from shared.topology import contract_exchange, subscription, work_queue

log = logging.getLogger("sip.notify.subscribers")

__all__ = ["GateTimeout", "register"]


def register(
    runtime: ServiceRuntime,
    dispatcher: Dispatcher,
    uow: Callable[[], NotifyUnitOfWork],
    reader: Callable[[], NotifyUnitOfWork],
    settings: NotifySettings | None = None,
) -> None:
    """``uow``: a unit of work per message (``app.py`` chooses SQL); ``reader``: the same without a
    transaction of its own, for the withdrawal's first read."""
    register_handlers(runtime, HANDLERS, uow, after=dispatcher.wake)

    # a send in progress ends within its channel's timeout (plus recording it); wait that long at most
    gate_wait = 2 * max(settings.send_timeout, settings.http_timeout) + 30 if settings else 60.0
    withdrawn = subscription("notify", ConsentWithdrawn)

    @runtime.broker.subscriber(
        work_queue(withdrawn), contract_exchange(ConsentWithdrawn), title=withdrawn.queue_name
    )
    async def on_consent_withdrawn(msg: ConsentWithdrawn) -> None:
        """Stop every unsent notification of the case and tell the participants, in one transaction
        taken under the cases' send gate (exclusive): the cancel wins every race with the dispatcher."""
        outcome = await withdraw(
            msg, consumer=withdrawn.queue_name, uow=uow, reader=reader, gate=dispatcher.gate, wait=gate_wait
        )
        if outcome is not None:
            log.info(
                "consent no longer holds: unsent notifications cancelled, participants told",
                extra={
                    "consent_id": str(msg.consent_id),
                    "cause": msg.cause,
                    "cases": [str(c) for c in outcome.cases],
                    "cancelled": len(outcome.cancelled),
                    "notices": len(outcome.notices),
                    "correlation_id": msg.correlation_id,
                },
            )
        dispatcher.wake()
