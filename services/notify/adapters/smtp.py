"""E-mail over SMTP with aiosmtplib, over reused connections; failures classified as transient or permanent.

Connections are pooled (at most ``send_concurrency``, closed after :data:`IDLE_SECONDS` idle and at
shutdown); see :class:`SmtpEmailSender` for when a connection is dropped and when a mail is sent
again on a fresh one.

Classification (what retrying can fix):
- connection refused/reset, server disconnected, timeouts → :class:`ChannelUnavailable` (a transient
  error that is not counted against the mail: the server is away, see :mod:`shared.dependencies`);
- 4xx replies → :class:`TransientSendError`;
- 5xx replies (including refused recipients and failed authentication), a server without a
  required feature (:class:`aiosmtplib.SMTPNotSupported`, e.g. SMTPUTF8) → :class:`PermanentSendError`.
  (STARTTLS required but not offered comes from aiosmtplib as a plain ``SMTPException`` and so
  counts as transient: nothing is sent in the clear, and it is retried until attempts run out.)

Error texts are stored as ``last_error`` and logged, so addresses echoed by the server are masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import functools
import io
import logging
import random
import re
import socket
import ssl
import sys
import time
from datetime import UTC, datetime
from email.contentmanager import set_bytes_content, set_text_content  # type: ignore[attr-defined]
from email.generator import BytesGenerator
from email.message import Message
from email.policy import Compat32
from email.utils import format_datetime
from typing import Any, cast

import aiosmtplib

from services.notify.ics import calendar_method
from services.notify.ports import (
    CalendarAttachment,
    ChannelUnavailable,
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


# ---- the message ----------------------------------------------------------------------------
# Built with the compat32 ``email.message.Message`` (several times cheaper than ``EmailMessage``,
# which parses every header it is given) and written by :func:`flatten` so that what arrives is what
# ``EmailMessage`` + ``email.policy.SMTP`` produced: the same headers (a non-ASCII or long one folded
# and RFC 2047-encoded by that policy itself), the same parts with the same transfer encodings (the
# standard library's own choice for text: 7bit/8bit, or quoted-printable/base64 for long lines).
# tests/unit/notify/test_mime.py compares the two.
_HEADERS = email.policy.default  # folds as email.policy.SMTP does, with "\n" (sendmail sends CRLF)
_HEADERS_UTF8 = email.policy.default.clone(utf8=True)  # RFC 6532, when the envelope needs SMTPUTF8
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))


class _Wire(Compat32):
    """compat32 as the generator writes it, without its costs and with one difference.

    A short ASCII header is written as it is (compat32 would run every header through
    ``email.header.Header`` to the same effect); a :class:`_Folded` one as it was folded. Lines that
    begin with ``From `` are left alone (compat32 would write ``>From ``; ``email.policy.SMTP`` does not).
    """

    mangle_from_ = False
    max_line_length: int  # compat32's 78, never None (no limit) here

    def fold_binary(self, name: str, value: Any) -> bytes:
        if isinstance(value, _Folded):
            return f"{name}: {value.encode(self.linesep)}{self.linesep}".encode("ascii", "surrogateescape")
        if (
            isinstance(value, str)
            and value.isascii()
            and len(name) + len(value) + 2 <= self.max_line_length
            and "\n" not in value
            and "\r" not in value
        ):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_WIRE = _Wire()
_WIRE_7BIT = _Wire(cte_type="7bit")  # a server without 8BITMIME: 8bit parts are re-encoded


class _Folded:
    """A header value folded (and RFC 2047-encoded where needed) by ``email.policy``, once."""

    __slots__ = ("_text", "value")

    def __init__(self, name: str, value: str, *, utf8: bool) -> None:
        policy = _HEADERS_UTF8 if utf8 else _HEADERS
        text = policy.header_factory(name, value).fold(policy=policy)[len(name) + 2 : -1]
        self.value = value
        self._text = text if text.isascii() else text.encode("utf-8").decode("ascii", "surrogateescape")

    def encode(self, linesep: str = "\n", *_args: Any, **_kwargs: Any) -> str:
        """As ``email.header.Header.encode`` (how compat32 writes a header that is not a str)."""
        return self._text if linesep == "\n" else self._text.replace("\n", linesep)

    def __str__(self) -> str:
        return self.value


def _header(name: str, value: str, *, utf8: bool) -> str | _Folded:
    if value.isascii() and len(name) + len(value) + 2 <= _WIRE.max_line_length:
        return value
    return _Folded(name, value, utf8=utf8)


@functools.lru_cache(maxsize=8)
def envelope_sender(mail_from: str) -> str:
    """The address of ``From`` (``"Name <a@b>"`` → ``a@b``), as aiosmtplib took it from the header."""
    addresses = _HEADERS.header_factory("From", mail_from).addresses
    return addresses[0].addr_spec if addresses else mail_from


def needs_smtputf8(sender: str, recipients: tuple[str, ...]) -> bool:
    return not (sender.isascii() and all(r.isascii() for r in recipients))


def _part(setter: Any, *args: Any, **kwargs: Any) -> Message:
    part = Message(policy=_WIRE)
    setter(part, *args, **kwargs)  # email.contentmanager's own: the same encoding EmailMessage picks
    return part


def _multipart(subtype: str, parts: list[Message], texts: list[str], into: Message | None = None) -> Message:
    """``parts`` as multipart/``subtype`` (in ``into``): a boundary like the generator's own, chosen
    so that it occurs in none of ``texts`` (what it separates)."""
    while True:
        boundary = f"{'=' * 15}{random.randrange(sys.maxsize):0{_BOUNDARY_DIGITS}d}=="
        if not any(boundary in t for t in texts):
            break
    msg = into if into is not None else Message(policy=_WIRE)
    msg["Content-Type"] = f'multipart/{subtype}; boundary="{boundary}"'
    msg.set_payload(cast("list[Message | str]", parts))
    return msg


def build_message(email: OutgoingEmail, mail_from: str) -> Message:
    """The e-mail: text/plain (UTF-8); with a calendar, multipart/mixed of a multipart/alternative
    (the text, and text/calendar with its method, RFC 6047) and the same calendar as an attachment."""
    utf8 = needs_smtputf8(envelope_sender(mail_from), email.to)
    msg: Message[str, Any] = Message(policy=_WIRE)  # a header's value may be a _Folded
    msg["From"] = _header("From", mail_from, utf8=utf8)
    msg["To"] = _header("To", ", ".join(email.to), utf8=utf8)
    msg["Subject"] = _header("Subject", email.subject, utf8=utf8)
    msg["Message-ID"] = email.message_id
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Content-Language"] = email.language
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    text = _part(set_text_content, email.body, "plain", "utf-8")
    if email.calendar is None:
        # the part's headers and payload as they are (compat32 internals: typeshed does not know them)
        msg._headers.extend(text._headers)  # type: ignore[attr-defined]
        msg.set_payload(text._payload)  # type: ignore[attr-defined]
        msg["MIME-Version"] = "1.0"
        return msg
    # the calendar part that mail clients turn into an event (RFC 6047), plus the same as a file
    # for clients that only show attachments
    cal = email.calendar
    invitation = _part(set_text_content, cal.ics, "calendar", "utf-8", params={"method": cal.method})
    attachment = _part(
        set_bytes_content, cal.ics.encode("utf-8"), "application", "ics", filename=cal.filename
    )
    texts = [text._payload, invitation._payload, attachment._payload]  # type: ignore[attr-defined]
    alternative = _multipart("alternative", [text, invitation], texts)
    msg["MIME-Version"] = "1.0"
    return _multipart("mixed", [alternative, attachment], [*texts, alternative["Content-Type"]], into=msg)


def flatten(msg: Message, *, cte_type: str = "8bit") -> bytes:
    """The message as it goes to the server (``"\n"`` line ends; sendmail sends CRLF)."""
    out = io.BytesIO()
    BytesGenerator(out, policy=_WIRE if cte_type == "8bit" else _WIRE_7BIT).flatten(msg)
    return out.getvalue()


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
        return ChannelUnavailable("timed out talking to the mail server")
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | OSError):
        return ChannelUnavailable(f"cannot reach the mail server ({type(exc).__name__})")
    if isinstance(exc, ssl.SSLError):
        return TransientSendError(f"TLS failure talking to the mail server ({type(exc).__name__})")
    return TransientSendError(f"unexpected mail error ({type(exc).__name__}): {scrub(str(exc))}")


@functools.cache
def _local_hostname() -> str:
    """The EHLO name, looked up once (aiosmtplib otherwise resolves it on every connection)."""
    return socket.getfqdn()


#: a pooled connection unused for this long is closed (QUIT) instead of being used again; well below
#: the idle timeouts of common servers (Postfix 300 s, Exchange 10 min), so it is rarely the server
#: that closes it first — when it does, see :meth:`SmtpEmailSender.send`
IDLE_SECONDS = 30.0
#: how often the background task looks for connections idle past IDLE_SECONDS
_REAP_SECONDS = 5.0
#: patience for the QUIT of an idle connection (also at shutdown)
_QUIT_SECONDS = 2.0


class _Connection(aiosmtplib.SMTP):
    """A pooled client that knows whether the server answered the current mail's ``MAIL FROM``.

    Until it has, nothing of the mail was accepted: a connection lost on that first command was
    closed by the server while idle, and the mail can go again on a fresh connection without any
    risk of a duplicate.
    """

    reused = False  # it carried a mail before
    mail_answered = False

    async def mail(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        response = await super().mail(*args, **kwargs)
        self.mail_answered = True
        return response


def _closed_while_idle(exc: BaseException) -> bool:
    """The first command on a reused connection failed because the server had closed it."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == 421  # "service not available, closing transmission channel"
    return isinstance(exc, ConnectionError)  # SMTPServerDisconnected, reset, broken pipe


class _Mail:
    """One e-mail ready to go: its envelope, and its bytes made once per transfer encoding."""

    def __init__(self, email: OutgoingEmail, mail_from: str) -> None:
        self.sender = envelope_sender(mail_from)
        self.recipients = list(email.to)
        self.smtputf8 = needs_smtputf8(self.sender, email.to)
        self.message = build_message(email, mail_from)
        self._bytes: dict[str, bytes] = {}

    def data(self, cte_type: str) -> bytes:
        if cte_type not in self._bytes:
            self._bytes[cte_type] = flatten(self.message, cte_type=cte_type)
        return self._bytes[cte_type]

    async def transmit(self, client: _Connection) -> dict[str, aiosmtplib.SMTPResponse]:
        """MAIL, RCPT, DATA (aiosmtplib's ``sendmail``); the options as its ``send_message`` chose them."""
        client.mail_answered = False
        options: list[str] = []
        if self.smtputf8:
            if not client.supports_extension("smtputf8"):
                raise aiosmtplib.SMTPNotSupported(
                    "An address containing non-ASCII characters was provided, but "
                    "SMTPUTF8 is not supported by this server"
                )
            options.append("SMTPUTF8")
        if client.supports_extension("8BITMIME"):
            options.append("BODY=8BITMIME")
            data = self.data("8bit")
        else:
            data = self.data("7bit")
        errors, _reply = await client.sendmail(self.sender, self.recipients, data, mail_options=options)
        return errors


class SmtpEmailSender:
    """Sends over a small pool of SMTP connections (at most ``send_concurrency``), each used for
    one mail after another instead of a connection (connect, EHLO, STARTTLS, AUTH, QUIT) per mail.

    - A connection goes back to the pool only after a mail it carried was accepted; after any
      failure (a 5xx included) it is closed — its state is not trusted.
    - One taken from the pool that the server closed while it was idle (lost on the first command,
      or a 421 reply to it) is closed and the mail sent once more on a fresh connection; only that
      attempt's outcome counts (classified by :func:`classify`). A connection lost later in the
      conversation is not retried here: the server may have the mail (the dispatcher retries, with
      the same Message-ID).
    - Connections idle for :data:`IDLE_SECONDS` are closed by :meth:`run` (the service runs it in
      the background) and never used again; :meth:`aclose` closes them all (at shutdown).
    """

    def __init__(self, settings: NotifySettings) -> None:
        self.s = settings
        self._idle: list[tuple[_Connection, float]] = []  # oldest first; reused from the end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(settings.send_concurrency)

    async def _open(self) -> _Connection:
        """A new connection, greeted (EHLO, else HELO), with STARTTLS and AUTH as configured."""
        s = self.s
        client = _Connection(
            hostname=s.smtp_host,
            port=s.smtp_port,
            use_tls=s.smtp_tls,
            start_tls=s.smtp_starttls,  # True = required; False = plain (or implicit TLS)
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            timeout=s.send_timeout,
            local_hostname=_local_hostname(),
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # a plain connection is greeted on first use
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except BaseException:
            client.close()
            raise
        return client

    def _bind_loop(self) -> None:
        """Connections belong to the event loop they were made on; a new loop starts a new pool."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            for client, _ in self._idle:
                with contextlib.suppress(Exception):
                    client.close()
            self._idle.clear()
            self._slots = asyncio.Semaphore(self.s.send_concurrency)
            self._loop = loop

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection that is still open and not idle for too long."""
        deadline = time.monotonic() - IDLE_SECONDS
        while self._idle:
            client, since = self._idle.pop()
            if since >= deadline and client.is_connected:
                return client
            self._discard(client)
        return None

    @staticmethod
    def _discard(client: _Connection | None) -> None:
        if client is not None:
            client.close()

    async def send(self, email: OutgoingEmail) -> None:
        mail = _Mail(email, self.s.mail_from)
        self._bind_loop()
        async with self._slots:
            client = self._take_idle()
            try:
                try:
                    if client is None:
                        client = await self._open()
                    errors = await mail.transmit(client)
                except Exception as exc:
                    if client is None or not client.reused or client.mail_answered:
                        raise
                    if not _closed_while_idle(exc):
                        raise
                    log.debug(
                        "pooled SMTP connection was closed by the server; sending on a new one",
                        extra={"message_id": email.message_id},
                    )
                    self._discard(client)
                    client = None
                    client = await self._open()
                    errors = await mail.transmit(client)
            except BaseException as exc:  # a connection in an unknown state is never reused
                self._discard(client)
                if isinstance(exc, Exception):
                    raise classify(exc) from exc
                raise  # cancelled
            client.reused = True
            self._idle.append((client, time.monotonic()))
        if errors:
            # some addresses refused, others accepted: the mail went out, and a retry would
            # duplicate it for the accepted ones, so it counts as sent; the refusal is logged.
            log.warning(
                "mail server refused some recipients",
                extra={"message_id": email.message_id, "refused": len(errors)},
            )

    # ---- idle connections ---------------------------------------------------------------------
    async def close_idle(self, older_than: float | None = None) -> int:
        """QUIT and close the connections idle for ``older_than`` (:data:`IDLE_SECONDS`) or more."""
        deadline = time.monotonic() - (IDLE_SECONDS if older_than is None else older_than)
        expired = [c for c, since in self._idle if since <= deadline or not c.is_connected]
        if not expired:
            return 0
        self._idle = [(c, since) for c, since in self._idle if since > deadline and c.is_connected]
        await asyncio.gather(*(self._quit(c) for c in expired))
        return len(expired)

    @staticmethod
    async def _quit(client: _Connection) -> None:
        try:
            if client.is_connected:
                await client.quit(timeout=_QUIT_SECONDS)
        except Exception:  # it is going away anyway
            pass
        finally:
            client.close()

    async def aclose(self) -> None:
        """Close every idle connection (those in use are closed when their mail is done)."""
        await self.close_idle(older_than=0.0)

    async def run(self) -> None:
        """Background task: close connections idle past :data:`IDLE_SECONDS`; all of them at the end."""
        try:
            while True:
                await asyncio.sleep(_REAP_SECONDS)
                await self.close_idle()
        finally:
            await self.aclose()


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
                calendar=CalendarAttachment(n.ics, method=calendar_method(n.ics)) if n.ics else None,
            )
        )
