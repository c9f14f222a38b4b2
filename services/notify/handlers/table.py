"""notify's handler table: which handler takes which message, each called as ``handler(uow, msg)``.

The unit of work (:class:`NotifyUnitOfWork`) owns the notification repository and carries the
dependencies bound once by ``app.py`` (:class:`NotifyDeps`: the organisation directory, the clock,
the invitation options); SQL in the service (``adapters/unit_of_work.py``), in memory in the handler
tests (``adapters/memory.py``). ``subscribers.py`` hands :data:`HANDLERS` to
:func:`shared.handler_table.register_handlers`, which makes one generic subscriber per entry.

A consent withdrawal is not in the table: it takes the cases' send gate *before* its transaction
opens and redoes the transaction when the consent turns out to cover more cases
(:func:`withdraw`), which a table entry — one transaction around one call — cannot express.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.notify.gate import SendGate
from services.notify.handlers.invitations import accept_invitation
from services.notify.handlers.notices import handle_case_notice
from services.notify.handlers.reminders import escalate_deadline
from services.notify.handlers.routing import InvitationOptions
from services.notify.handlers.withdrawal import (
    MoreCases,
    WithdrawalOutcome,
    cases_of_withdrawal,
    stop_for_withdrawal,
)
from services.notify.ports import NotificationRepository
from shared.clock import Clock
from shared.contracts import CaseNotice, ConsentWithdrawn, Contract, DeadlineBreached, SendInvitation
from shared.directory import Directory
from shared.unit_of_work import Handler, UnitOfWork


@dataclass(frozen=True)
class NotifyDeps:
    """What the handlers need besides the repository, bound once in ``app.py``."""

    directory: Directory
    clock: Clock
    options: InvitationOptions = field(default_factory=InvitationOptions)


class NotifyUnitOfWork(UnitOfWork, Protocol):
    """notify's unit of work: the inbox and outbox, its notifications, its dependencies."""

    @property
    def notifications(self) -> NotificationRepository: ...

    @property
    def deps(self) -> NotifyDeps: ...


# The subscriber's AsyncAPI description is the handler's docstring (shared.handler_table): the
# invitation's subscriber never had one, so its handler has a comment instead.
async def send_invitation(uow: NotifyUnitOfWork, cmd: SendInvitation) -> None:
    # one notification per recipient organisation and channel kind, and the reminders
    # (services.notify.handlers.invitations.accept_invitation)
    await accept_invitation(
        cmd,
        directory=uow.deps.directory,
        repo=uow.notifications,
        clock=uow.deps.clock,
        options=uow.deps.options,
    )


async def deadline_breached(uow: NotifyUnitOfWork, ev: DeadlineBreached) -> None:
    """Escalate to the owning unit, once per breach (inbox + dedupe key on the breach message)."""
    await escalate_deadline(
        ev,
        directory=uow.deps.directory,
        repo=uow.notifications,
        clock=uow.deps.clock,
        options=uow.deps.options,
    )


async def case_notice(uow: NotifyUnitOfWork, notice: CaseNotice) -> None:
    """Plan established, follow-up due, case closed: tell the participants, once per notice
    (inbox + dedupe key on the notice message). Why no consent-gate call is needed for
    ``plan-established``: :func:`services.notify.handlers.handle_case_notice`."""
    await handle_case_notice(
        notice,
        directory=uow.deps.directory,
        repo=uow.notifications,
        clock=uow.deps.clock,
        options=uow.deps.options,
    )


COMMAND_HANDLERS: dict[type[Contract], Handler[NotifyUnitOfWork]] = {
    SendInvitation: send_invitation,
}
EVENT_HANDLERS: dict[type[Contract], Handler[NotifyUnitOfWork]] = {
    DeadlineBreached: deadline_breached,
    CaseNotice: case_notice,
}
#: what the generic subscriber serves (the withdrawal has its own subscriber: :func:`withdraw`)
HANDLERS: dict[type[Contract], Handler[NotifyUnitOfWork]] = {**COMMAND_HANDLERS, **EVENT_HANDLERS}


class GateTimeout(Exception):
    """Sends of the case did not finish in time; the withdrawal is retried (transient)."""


async def withdraw(
    ev: ConsentWithdrawn,
    *,
    consumer: str,
    uow: Callable[[], NotifyUnitOfWork],
    reader: Callable[[], NotifyUnitOfWork],
    gate: SendGate,
    wait: float,
) -> WithdrawalOutcome | None:
    """Stop every unsent notification of the case and tell the participants, in one transaction
    taken under the cases' send gate (exclusive), so the cancel wins every race with the dispatcher.

    The cases are read first (``reader``: no transaction held while the gate is awaited); when the
    consent turns out to cover more cases, the transaction is rolled back, those are gated too and
    it runs again. Taken once (the inbox, ``consumer``): None when the message was handled before.
    :class:`GateTimeout` when the sends in progress do not end within ``wait`` seconds (retried)."""
    async with reader() as r:
        cases = await cases_of_withdrawal(ev, r.notifications)

    async def stop(cases: list[Any]) -> WithdrawalOutcome | None:
        async with gate.stopping_all(list(cases)):
            async with uow() as work:
                if not await work.first_time(consumer, str(ev.message_id)):
                    return None
                deps = work.deps
                return await stop_for_withdrawal(
                    ev, cases=cases, directory=deps.directory, repo=work.notifications, clock=deps.clock
                )

    try:
        async with asyncio.timeout(wait):
            while True:
                try:
                    return await stop(cases)
                except MoreCases as more:  # rolled back; gate the new case(s) too and redo
                    cases = more.cases
    except TimeoutError:
        raise GateTimeout("sends of the case still in progress; withdrawal retried") from None
