"""The dispatcher: a background loop that sends due notifications and records the outcome.

One notification at a time goes through three steps, each its own transaction:

1. **claim** — ``pending → sending``, attempts + 1 (only if still pending, so two loops never
   send the same row at once);
2. **send** — over the notification's channel, each behind the one port
   :class:`~services.notify.ports.ChannelSender`: e-mail to the SMTP server with
   ``Message-ID: <{notification_id}@sip-suite>`` (the id is derived from the dedupe key, so every
   attempt carries the same Message-ID); webhook as a signed FHIR Communication whose id is the
   notification id; SMS through the HTTP gateway;
   — but only with the row still ``sending`` under this claim, inside the case's send gate: the
   loop takes the claim itself inside the gate (no withdrawal of this process commits between claim
   and send, so the conditional claim is the check); a notification claimed outside it
   (:meth:`Dispatcher.send_claimed`) is read again first — a consent withdrawal may have cancelled
   it since the claim (issue #4);
3. **record** — in ONE transaction: ``sending → sent`` (sent_at) and ``InvitationSent`` into the
   outbox; or, on a transient failure, back to ``pending`` with an exponential, capped backoff; on a
   permanent failure or when attempts are exhausted, ``failed`` with a reason free of personal data.

Crash rule (explicit, tested): a notification still in ``sending`` when the dispatcher starts was
being sent when the process died — between steps 1 and 3 we cannot know whether the server got the
mail. Each claim carries a lease (``claimed_until``, ``NOTIFY_CLAIM_LEASE_SECONDS``): a row still
``sending`` after its lease ran out belonged to a dispatcher that died mid-send, and any dispatcher
claims it again and sends it again: **delivery is at-least-once** on every channel.
The duplicate carries the same Message-ID (e-mail) or Communication id and ``X-Sip-Delivery-Id``
(webhook), so the receiving side can recognise it. Losing an invitation is worse than a rare
duplicate with the same id. Any number of notify replicas may share one database: a claim is one
conditional ``UPDATE`` (pending and due, or sending with an expired lease), so two dispatchers never
hold the same row, and a start-up releases only its own claims (``claimed_by``, the replica's
``NOTIFY_REPLICA_ID``, by default host and HTTP port: a restarted notify sends what it was sending
at once) and rows without a lease — never rows another replica is sending. The outcome is recorded
only under the claim that sent it (same attempt count), and while the database is away the record is
retried within the lease instead of leaving the row to be sent again.

Outages (:mod:`shared.dependencies`): a database error of the unavailable kind pauses the loop with
the dependency backoff (one log line per change, ``/readyz`` 503); an SMTP server that refuses
connections or does not answer (:class:`~services.notify.ports.ChannelUnavailable`) marks ``smtp``
unavailable and puts the mail back without counting the attempt, due again after the backoff —
a mail server down for an hour fails no invitation.

Cancel rule (issue #4, explicit, tested): a withdrawal cancels ``pending`` and ``sending`` rows and
wins every race. A row cancelled before its claim cannot be claimed (the claim is conditional); a
row cancelled after its claim is seen at the check right before the send and is not sent. The check,
the send and the recording run under the case's :class:`~services.notify.gate.SendGate` (shared),
which the withdrawal takes exclusively around its transaction: a send already past its check
finishes (and is recorded ``sent``) before the withdrawal commits; none starts after.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TypeVar
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from services.notify.domain import Notification, after_failure, backoff
from services.notify.fhir import communication_resource
from services.notify.gate import SendGate
from services.notify.ports import (
    ChannelSender,
    ChannelUnavailable,
    Delivery,
    NotificationRepository,
    PermanentSendError,
    SendError,
    TransientSendError,
)
from services.notify.settings import NotifySettings
from shared.clock import Clock
from shared.contracts import InvitationSent
from shared.dependencies import DATABASE, SMTP
from shared.runtime import ServiceRuntime

log = logging.getLogger("sip.notify.dispatcher")

BATCH = 50
T = TypeVar("T")


DELIVERY_OUTCOMES = ("sent", "retry", "failed", "unavailable")


class Dispatcher:
    def __init__(
        self,
        runtime: ServiceRuntime,
        channels: Mapping[str, ChannelSender],
        clock: Clock,
        settings: NotifySettings,
        *,
        notifications: Callable[[AsyncConnection], NotificationRepository],
    ) -> None:
        """``notifications``: the notification store on a connection (``app.py``: the SQL repository)."""
        self.runtime = runtime
        self.notifications = notifications
        self.channels = dict(channels)
        self.clock = clock
        self.settings = settings
        self.gate = SendGate()
        self._wake = asyncio.Event()
        self.lease = timedelta(seconds=settings.claim_lease_seconds)
        #: who holds a claim: the same after a restart of this replica, distinct between replicas
        self.owner = settings.replica_id or f"{socket.gethostname()}:{settings.http_port}"
        if "email" in self.channels:
            runtime.dependencies.track(SMTP)
        #: each send over a channel: outcome sent | retry (will be tried again) | failed (given up) |
        #: unavailable (the channel itself is away; not an attempt of the notification's own)
        self.attempts = runtime.metrics.counter(
            "sip_notify_delivery_attempts",
            "Deliveries tried over a channel, by channel and outcome (sent, retry, failed, unavailable)",
            ["channel", "outcome"],
        )
        for channel in self.channels:  # from 0, so the first failure is an increase an alert sees
            for outcome in DELIVERY_OUTCOMES:
                self.attempts.labels(channel=channel, outcome=outcome)

    def wake(self) -> None:
        self._wake.set()

    # ---- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Background task: release in-flight rows (crash rule), then send whatever is due."""
        while True:
            try:
                released = await self.release_in_flight()
                break
            except Exception as exc:
                dependency = self.runtime.dependencies.report(exc)
                if dependency is None:
                    log.exception("could not release in-flight notifications; will retry")
                    await asyncio.sleep(self.settings.dispatch_interval)
                else:
                    await self.runtime.dependencies.wait(dependency)
        if released:
            log.warning(
                "notifications found in 'sending' at start-up will be sent again (same Message-ID)",
                extra={"count": released},
            )
        while True:
            # cleared before the pass: a wake() while it runs (a notification stored after its
            # SELECT) starts the next pass at once instead of after dispatch_interval
            self._wake.clear()
            try:
                sent_any = await self.dispatch_once()
            except Exception as exc:  # the loop must outlive database hiccups
                dependency = self.runtime.dependencies.report(exc)
                if dependency is None:
                    log.exception("dispatch pass failed; will retry")
                else:  # one log line per outage (the monitor's); wait with its backoff
                    await self.runtime.dependencies.wait(dependency)
                sent_any = 0
            if sent_any >= BATCH:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.dispatch_interval)

    async def release_in_flight(self) -> int:
        async with self.runtime.unit_of_work() as uow:
            return await self.notifications(uow.conn).release_in_flight(self.clock.now(), self.owner)

    async def dispatch_once(self) -> int:
        """Try every due notification once (up to a batch); return how many were tried.

        Due means ``next_attempt_at`` has come (a reminder's is its due time; the claim checks it
        again). A reminder that comes due only after its meeting began — notify was down, or retries
        ran past it — is cancelled instead (reason ``meeting-started``): it would only confuse.
        """
        now = self.clock.now()
        async with self.runtime.engine.connect() as conn:
            due = await self.notifications(conn).due(now, BATCH)
        # a read is not a sign the database is back (on a full disk reads work, writes do not): the
        # claims below, the consumers' stored work and the monitor's probe say so
        late = [
            n.id
            for n in due
            if n.kind == "reminder" and n.meeting_start is not None and n.meeting_start <= now
        ]
        if late:
            async with self.runtime.unit_of_work() as uow:
                await self.notifications(uow.conn).cancel_pending(late, reason_code="meeting-started", at=now)
            log.info("reminders not sent: their meeting had already started", extra={"count": len(late)})
            gone = set(late)
            due = [n for n in due if n.id not in gone]
        # several mails in flight at once (bounded); the claim keeps any one from going out twice
        limit = asyncio.Semaphore(self.settings.send_concurrency)

        async def one(n: Notification) -> None:
            async with limit:
                await self._deliver_due(n)

        await asyncio.gather(*(one(n) for n in due))
        return len(due) + len(late)

    # ---- one notification -------------------------------------------------------------------
    async def deliver(self, notification_id: UUID) -> str | None:
        """Claim, send, record. Returns the resulting status (None if someone else had it)."""
        async with self.runtime.unit_of_work() as uow:
            n = await self.notifications(uow.conn).claim(
                notification_id, self.clock.now(), self.lease, by=self.owner
            )
        if n is None:
            return None
        return await self.send_claimed(n)

    async def _deliver_due(self, due: Notification) -> str | None:
        """:meth:`deliver` with the claim taken inside the case's send gate. A withdrawal takes the
        gate exclusively around its transaction, so none commits between this claim — conditional
        on the row being pending (or its lease run out), never cancelled — and the send: the claim
        is the check right before the send, and the separate read of the status is not needed."""
        async with self.gate.sending(due.case_id):
            async with self.runtime.unit_of_work() as uow:
                n = await self.notifications(uow.conn).claim(
                    due.id, self.clock.now(), self.lease, by=self.owner
                )
            if n is None:
                return None
            self.runtime.dependencies.up(DATABASE)  # the claim was stored
            return await self._send_checked(n)

    async def send_claimed(self, n: Notification) -> str:
        """Send a claimed notification and record the outcome — unless it was stopped meanwhile.

        Right before the channel is called, inside the case's send gate, the row is read again: only
        if it is still ``sending`` with this claim's attempt count does the send go ahead. A
        withdrawal that cancelled it wins; nothing is sent and nothing is recorded (the cancel is).
        """
        async with self.gate.sending(n.case_id):
            async with self.runtime.engine.connect() as conn:
                current = await self.notifications(conn).status(n.id)
            if current != ("sending", n.attempts):
                log.info(
                    "claimed notification not sent: it was stopped meanwhile",
                    extra={
                        "notification_id": str(n.id),
                        "case_id": str(n.case_id),
                        "status": current[0] if current else None,
                        "correlation_id": n.correlation_id,
                    },
                )
                return current[0] if current else "gone"
            return await self._send_checked(n)

    async def _send_checked(self, n: Notification) -> str:
        """Send a claimed notification found still ``sending`` under this claim (inside the case's
        send gate), and record the outcome."""
        deadline = asyncio.get_running_loop().time() + self.lease.total_seconds() * 0.8
        failure: SendError | None
        try:
            await self._send(n)
        except SendError as exc:
            failure = exc
        except Exception as exc:  # an unexpected bug in a sender must not lose the mail
            log.exception(
                "unexpected error from a channel",
                extra={"notification_id": str(n.id), "channel": n.channel},
            )
            failure = TransientSendError(f"unexpected error ({type(exc).__name__})")
        else:
            failure = None
        if failure is not None:
            status = await self._recording(deadline, lambda: self._record_failure(n, failure))
            outcome = (
                "unavailable" if isinstance(failure, ChannelUnavailable)
                else "failed" if status == "failed" else "retry"
            )  # fmt: skip
            self.attempts.labels(channel=n.channel, outcome=outcome).inc()
            return status
        self.attempts.labels(channel=n.channel, outcome="sent").inc()
        if n.channel == "email":
            self.runtime.dependencies.up(SMTP)
        return await self._recording(deadline, lambda: self._record_sent(n))

    async def _recording(self, deadline: float, record: Callable[[], Awaitable[T]]) -> T:
        """Record an outcome; while the database is unavailable, try again (with the dependency
        backoff) until shortly before the claim's lease ends — a mail that went out is recorded
        ``sent`` rather than left to be claimed and sent again after the lease."""
        while True:
            try:
                return await record()
            except Exception as exc:
                dependency = self.runtime.dependencies.report(exc)
                if dependency is None or asyncio.get_running_loop().time() >= deadline:
                    raise
                await self.runtime.dependencies.wait(dependency)

    async def _send(self, n: Notification) -> None:
        channel = self.channels.get(n.channel)
        if channel is None:
            raise PermanentSendError(f"no sender configured for channel {n.channel}")
        # the Communication is built only if the channel reads it (the webhook does; e-mail and SMS
        # do not), with the attempt's time taken here, before the channel is called
        build = functools.partial(communication_resource, n, sent_at=self.clock.now(), for_delivery=True)
        await channel.deliver(Delivery(notification=n, build_communication=build))

    async def _record_sent(self, n: Notification) -> str:
        now = self.clock.now()
        async with self.runtime.unit_of_work() as uow:
            marked = await self.notifications(uow.conn).mark_sent(n.id, now, attempts=n.attempts)
            if marked and n.kind == "invitation":
                await uow.send(
                    InvitationSent(
                        case_id=n.case_id,
                        notification_id=n.id,
                        recipient_hsa_id=n.recipient_hsa_id,
                        channel=n.channel,
                        sent_at=now,
                        correlation_id=n.correlation_id,
                    )
                )
        if not marked:  # its lease ran out and another dispatcher took it over, or a cancel won
            log.warning(
                "notification sent but no longer 'sending' when recorded",
                extra={"notification_id": str(n.id), "case_id": str(n.case_id)},
            )
        log.info(
            "notification sent",
            extra={
                "notification_id": str(n.id),
                "kind": n.kind,
                "channel": n.channel,
                "case_id": str(n.case_id),
                "recipient_hsa_id": n.recipient_hsa_id,
                "attempts": n.attempts,
                "correlation_id": n.correlation_id,
            },
        )
        return "sent"

    async def _record_failure(self, n: Notification, exc: SendError) -> str:
        now = self.clock.now()
        error = str(exc) or type(exc).__name__
        status = after_failure(
            attempts=n.attempts,
            max_attempts=self.settings.max_send_attempts,
            permanent=isinstance(exc, PermanentSendError),
        )
        unavailable = isinstance(exc, ChannelUnavailable)
        if unavailable:
            # the channel is away, not the mail: not an attempt of its own, due again after the
            # dependency backoff (the next one that goes through marks the channel back)
            assert isinstance(exc, ChannelUnavailable)
            self.runtime.dependencies.down(exc.dependency, error)
            status = "pending"
        async with self.runtime.unit_of_work() as uow:
            repo = self.notifications(uow.conn)
            if status == "failed":
                if n.attempts >= self.settings.max_send_attempts and not isinstance(exc, PermanentSendError):
                    error = f"gave up after {n.attempts} attempts: {error}"
                await repo.mark_failed(n.id, now, error, attempts=n.attempts)
            elif unavailable:
                assert isinstance(exc, ChannelUnavailable)
                wait = min(self.runtime.dependencies.backoff(exc.dependency), self.settings.retry_max_seconds)
                delay = timedelta(seconds=wait)
                await repo.reschedule(n.id, now + delay, now, error, attempts=n.attempts, refund=True)
            else:
                delay = backoff(
                    n.attempts,
                    base_seconds=self.settings.retry_base_seconds,
                    max_seconds=self.settings.retry_max_seconds,
                )
                await repo.reschedule(n.id, now + delay, now, error, attempts=n.attempts)
        extra = {
            "notification_id": str(n.id),
            "recipient_hsa_id": n.recipient_hsa_id,
            "channel": n.channel,
            "attempts": n.attempts,
            "error": error,
            "correlation_id": n.correlation_id,
        }
        if status == "failed":
            log.error("notification failed", extra=extra)
        elif not unavailable:  # an unavailable channel is logged once per outage (shared.dependencies)
            log.warning("send failed, will retry", extra=extra)
        return status
