"""RabbitMQ edge of notify: translate a message, call a handler, inside one unit of work."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from services.notify import handlers
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.dispatcher import Dispatcher
from services.notify.settings import NotifySettings
from shared.clock import Clock
from shared.contracts import CaseNotice, ConsentWithdrawn, DeadlineBreached, SendInvitation
from shared.directory import Directory
from shared.runtime import ServiceRuntime
from shared.topology import contract_exchange, subscription, work_queue

log = logging.getLogger("sip.notify.subscribers")


class GateTimeout(Exception):
    """Sends of the case did not finish in time; the withdrawal is retried (transient)."""


def register(
    runtime: ServiceRuntime,
    directory: Directory,
    dispatcher: Dispatcher,
    clock: Clock,
    settings: NotifySettings | None = None,
) -> None:
    options = handlers.InvitationOptions.of(settings)
    # a send in progress ends within its channel's timeout (plus recording it); wait that long at most
    gate_wait = 2 * max(settings.send_timeout, settings.http_timeout) + 30 if settings else 60.0

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

    breach = subscription("notify", DeadlineBreached)

    @runtime.broker.subscriber(
        work_queue(breach), contract_exchange(DeadlineBreached), title=breach.queue_name
    )
    async def on_deadline_breached(msg: DeadlineBreached) -> None:
        """Escalate to the owning unit, once per breach (inbox + dedupe key on the breach message)."""
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(breach.queue_name, str(msg.message_id)):
                await handlers.escalate_deadline(
                    msg,
                    directory=directory,
                    repo=SqlNotificationRepository(uow.conn),
                    clock=clock,
                    options=options,
                )
        dispatcher.wake()

    case_notice = subscription("notify", CaseNotice)

    @runtime.broker.subscriber(
        work_queue(case_notice), contract_exchange(CaseNotice), title=case_notice.queue_name
    )
    async def on_case_notice(msg: CaseNotice) -> None:
        """Plan established, follow-up due, case closed: tell the participants, once per notice
        (inbox + dedupe key on the notice message). Why no consent-gate call is needed for
        ``plan-established``: :func:`services.notify.handlers.handle_case_notice`."""
        async with runtime.unit_of_work() as uow:
            if await uow.first_time(case_notice.queue_name, str(msg.message_id)):
                await handlers.handle_case_notice(
                    msg,
                    directory=directory,
                    repo=SqlNotificationRepository(uow.conn),
                    clock=clock,
                    options=options,
                )
        dispatcher.wake()

    withdrawn = subscription("notify", ConsentWithdrawn)

    async def _stop(msg: ConsentWithdrawn, cases: list[UUID]) -> handlers.WithdrawalOutcome | None:
        async with dispatcher.gate.stopping_all(list(cases)):
            async with runtime.unit_of_work() as uow:
                if not await uow.first_time(withdrawn.queue_name, str(msg.message_id)):
                    return None
                repo = SqlNotificationRepository(uow.conn)
                return await handlers.stop_for_withdrawal(
                    msg, cases=cases, directory=directory, repo=repo, clock=clock
                )

    @runtime.broker.subscriber(
        work_queue(withdrawn), contract_exchange(ConsentWithdrawn), title=withdrawn.queue_name
    )
    async def on_consent_withdrawn(msg: ConsentWithdrawn) -> None:
        """Stop every unsent notification of the case and tell the participants, in one transaction
        taken under the cases' send gate (exclusive): the cancel wins every race with the dispatcher."""
        async with runtime.engine.connect() as conn:
            cases = await handlers.cases_of_withdrawal(msg, SqlNotificationRepository(conn))
        outcome: handlers.WithdrawalOutcome | None = None
        try:
            async with asyncio.timeout(gate_wait):
                while True:
                    try:
                        outcome = await _stop(msg, cases)
                        break
                    except handlers.MoreCases as more:  # rolled back; gate the new case(s) too and redo
                        cases = more.cases
        except TimeoutError:
            raise GateTimeout("sends of the case still in progress; withdrawal retried") from None
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
