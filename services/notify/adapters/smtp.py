"""E-mail over SMTP with aiosmtplib; failures classified as transient or permanent.

Classification (what retrying can fix):
- connection refused/reset, server disconnected, timeouts, 4xx replies → :class:`TransientSendError`;
- 5xx replies (including refused recipients and failed authentication), a server without a
  required feature (STARTTLS) → :class:`PermanentSendError`.

Error texts are stored as ``last_error`` and logged, so addresses echoed by the server are masked.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from services.notify.ports import (
    CalendarAttachment,
    Delivery,
    EmailSender,
    OutgoingEmail,
    PermanentSendError,
    SendError,
    TransientSendError,
)
from services.notify.settings import NotifySettings
from services.notify.templates import PERSONAL_NUMBER

log = logging.getLogger("sip.notify.smtp")

_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+")


def scrub(text: str, limit: int = 300) -> str:
    """Remove addresses and anything shaped like a personnummer from a server's reply."""
    text = _EMAIL.sub("<address>", text)
    text = PERSONAL_NUMBER.sub("<number>", text)
    return " ".join(text.split())[:limit]


def build_message(email: OutgoingEmail, mail_from: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = ", ".join(email.to)
    msg["Subject"] = email.subject
    msg["Message-ID"] = email.message_id
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Content-Language"] = email.language
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    msg.set_content(email.body)
    if email.calendar is not None:
        # the calendar part that mail clients turn into an event (RFC 6047), plus the same as a
        # file for clients that only show attachments
        msg.add_alternative(email.calendar.ics, subtype="calendar", params={"method": email.calendar.method})
        msg.add_attachment(
            email.calendar.ics.encode("utf-8"),
            maintype="application",
            subtype="ics",
            filename=email.calendar.filename,
        )
    return msg


def classify(exc: BaseException) -> SendError:
    if isinstance(exc, SendError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        reason = f"all recipients refused (SMTP {', '.join(str(c) for c in codes)})"
        if codes and all(400 <= c < 500 for c in codes):
            return TransientSendError(reason)
        return PermanentSendError(reason)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = f"SMTP {exc.code}: {scrub(exc.message)}"
        if 500 <= exc.code < 600:
            return PermanentSendError(text)
        return TransientSendError(text)  # 4xx, and anything odd, may pass later
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return PermanentSendError(f"mail server does not support a required feature: {scrub(str(exc))}")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return TransientSendError("timed out talking to the mail server")
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | OSError):
        return TransientSendError(f"cannot reach the mail server ({type(exc).__name__})")
    if isinstance(exc, ssl.SSLError):
        return TransientSendError(f"TLS failure talking to the mail server ({type(exc).__name__})")
    return TransientSendError(f"unexpected mail error ({type(exc).__name__}): {scrub(str(exc))}")


@functools.cache
def _local_hostname() -> str:
    """The EHLO name, looked up once (aiosmtplib otherwise resolves it on every connection)."""
    return socket.getfqdn()


class SmtpEmailSender:
    def __init__(self, settings: NotifySettings) -> None:
        self.s = settings

    async def send(self, email: OutgoingEmail) -> None:
        s = self.s
        msg = build_message(email, s.mail_from)
        try:
            errors, _reply = await aiosmtplib.send(
                msg,
                hostname=s.smtp_host,
                port=s.smtp_port,
                use_tls=s.smtp_tls,
                start_tls=s.smtp_starttls,  # True = required; False = plain (or implicit TLS)
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                timeout=s.send_timeout,
                local_hostname=_local_hostname(),
            )
        except Exception as exc:
            raise classify(exc) from exc
        if errors:
            # some addresses refused, others accepted: the mail went out, and a retry would
            # duplicate it for the accepted ones, so it counts as sent; the refusal is logged.
            log.warning(
                "mail server refused some recipients",
                extra={"message_id": email.message_id, "refused": len(errors)},
            )


class EmailChannelSender:
    """The e-mail channel behind the one channel port: a notification → an :class:`OutgoingEmail`.

    ``Message-ID`` is derived from the notification id (the same for every attempt); an invitation
    with a meeting time carries its calendar invitation.
    """

    def __init__(self, sender: EmailSender) -> None:
        self.sender = sender

    async def deliver(self, delivery: Delivery) -> None:
        n = delivery.notification
        addresses = tuple(a.strip() for a in (n.address or "").split(",") if a.strip())
        if not addresses:
            raise PermanentSendError("email: no address in the directory")
        await self.sender.send(
            OutgoingEmail(
                message_id=n.email_message_id,
                to=addresses,
                subject=n.subject,
                body=n.body,
                language=n.language,
                calendar=CalendarAttachment(n.ics) if n.ics else None,
            )
        )
