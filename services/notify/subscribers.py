"""RabbitMQ edge of notify: translate a message, call a handler, inside one unit of work."""

from __future__ import annotations

from services.notify import handlers
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.dispatcher import Dispatcher
from services.notify.settings import NotifySettings
from shared.clock import Clock
from shared.contracts import SendInvitation
from shared.directory import Directory
from shared.runtime import ServiceRuntime
from shared.topology import contract_exchange, subscription, work_queue


def register(
    runtime: ServiceRuntime,
    directory: Directory,
    dispatcher: Dispatcher,
    clock: Clock,
    settings: NotifySettings | None = None,
) -> None:
    options = handlers.InvitationOptions.of(settings)

    invite = subscription("notify", SendInvitation)

    @runtime.broker.subscriber(work_queue(invite), contract_exchange(SendInvitation), title=invite.queue_name)
    async def on_send_invitation(msg: SendInvitation) -> None:
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(invite.queue_name, str(msg.message_id)):
                await handlers.accept_invitation(
                    msg,
                    directory=directory,
                    repo=SqlNotificationRepository(uow.conn),
                    clock=clock,
                    options=options,
                )
        dispatcher.wake()
