"""The SMTP connection pool against a real SMTP server process (tests/integration/notify/smtp_server.py)
that counts connections: reuse, the bound, a connection the server closed while idle, STARTTLS/TLS
and AUTH on reused connections, and what is (not) retried."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from services.notify.adapters import smtp
from services.notify.adapters.smtp import SmtpEmailSender
from services.notify.ports import CalendarAttachment, OutgoingEmail, PermanentSendError, TransientSendError
from services.notify.settings import NotifySettings
from tests.integration.ops.test_tls import self_signed
from tests.support.infra import Proc, free_port, python_module

pytestmark = pytest.mark.store_free

USER, PASSWORD = "sip-notify", "test-only-password"


@dataclass
class Server:
    port: int
    dir: Path
    proc: Proc

    def events(self) -> list[str]:
        lines = (self.dir / "events").read_text(encoding="ascii").split()
        return lines[lines.index("ready") + 1 :] if "ready" in lines else []

    def opens(self) -> int:
        return self.events().count("open")

    def quits(self) -> int:
        return self.events().count("quit")

    def message_ids(self) -> list[str]:
        return [
            str(email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["Message-ID"])
            for p in sorted(self.dir.glob("*.eml"))
        ]


@contextmanager
def smtp_server(tmp: Path, *args: str) -> Iterator[Server]:
    port, directory = free_port(), tmp / f"smtp-{free_port()}"
    proc = Proc(
        "smtp_server",
        python_module(
            "tests.integration.notify.smtp_server", "--port", str(port), "--dir", str(directory), *args
        ),
        env=dict(__import__("os").environ),
        log_path=tmp / "smtp_server.log",
    ).start()
    server = Server(port, directory, proc)
    try:
        deadline = time.monotonic() + 20
        while not (directory / "events").exists() or "ready" not in (directory / "events").read_text():
            if (proc.popen is not None and proc.popen.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"smtp_server did not start:\n{proc.log()}")
            time.sleep(0.05)
        yield server
    finally:
        proc.stop()


def settings(server: Server, **kw: Any) -> NotifySettings:
    return NotifySettings(smtp_port=server.port, send_timeout=5.0, **kw)


def mail(i: int, **kw: Any) -> OutgoingEmail:
    fields: dict[str, Any] = dict(
        message_id=f"<00000000-0000-5000-8000-{i:012d}@sip-suite>",
        to=("sip-socialtjanst@stockholm.example",),
        subject="Kallelse till SIP-planering – SIP-2026-4F3A9C",
        body="Hej,\n\nÄrende: SIP-2026-4F3A9C\n",
    )
    fields.update(kw)
    return OutgoingEmail(**fields)


def ids(*numbers: int) -> list[str]:
    return [mail(i).message_id for i in numbers]


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 that the client trusts (as its CA bundle)."""
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return str(cert), str(key)


async def test_mails_one_after_another_share_one_connection(tmp_path):
    with smtp_server(tmp_path) as server:
        sender = SmtpEmailSender(settings(server))
        for i in range(5):
            await sender.send(
                mail(
                    i, calendar=CalendarAttachment("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n") if i % 2 else None
                )
            )
        assert server.message_ids() == ids(0, 1, 2, 3, 4)
        assert server.opens() == 1
        await sender.aclose()
        await asyncio.sleep(0.2)
        assert server.quits() == 1  # closed politely


async def test_concurrent_mails_use_at_most_send_concurrency_connections(tmp_path):
    with smtp_server(tmp_path) as server:
        sender = SmtpEmailSender(settings(server, send_concurrency=3))
        await asyncio.gather(*(sender.send(mail(i)) for i in range(12)))
        await asyncio.gather(*(sender.send(mail(i)) for i in range(12, 24)))
        assert sorted(server.message_ids()) == ids(*range(24))
        assert 1 <= server.opens() <= 3
        await sender.aclose()


async def test_a_connection_the_server_closed_while_idle_is_replaced(tmp_path):
    with smtp_server(tmp_path, "--idle-timeout", "0.5") as server:
        sender = SmtpEmailSender(settings(server))
        await sender.send(mail(1))
        await asyncio.sleep(1.2)  # the server hangs up on the idle connection
        await sender.send(mail(2))
        assert server.message_ids() == ids(1, 2)  # none lost, none twice
        assert server.opens() == 2
        await sender.aclose()


async def test_a_reused_connection_lost_on_its_first_command_is_retried_once_on_a_fresh_one(tmp_path):
    """The server closes every connection that carried a mail at its next MAIL FROM (the client only
    notices then): each mail still arrives exactly once, over a new connection."""
    with smtp_server(tmp_path, "--drop-reused") as server:
        sender = SmtpEmailSender(settings(server))
        for i in range(4):
            await sender.send(mail(i))
        assert server.message_ids() == ids(0, 1, 2, 3)
        assert server.opens() == 4
        await sender.aclose()


async def test_a_connection_lost_after_the_data_is_not_retried_by_the_sender(tmp_path):
    """Lost after the message was sent: the server may have it, so no immediate second try — the
    failure is transient (the dispatcher retries later with the same Message-ID) and the connection
    is not used again."""
    with smtp_server(tmp_path, "--drop-after-data") as server:
        sender = SmtpEmailSender(settings(server))
        await sender.send(mail(1))
        with pytest.raises(TransientSendError):
            await sender.send(mail(2))
        assert server.opens() == 1  # no new connection for a second try
        await sender.send(mail(3))
        assert server.message_ids() == ids(1, 3)
        assert server.opens() == 2
        await sender.aclose()


async def test_a_refused_mail_is_permanent_and_its_connection_is_dropped(tmp_path):
    with smtp_server(tmp_path) as server:
        sender = SmtpEmailSender(settings(server))
        await sender.send(mail(1))
        with pytest.raises(PermanentSendError, match="SMTP 550"):
            await sender.send(mail(2, to=("avvisas@stockholm.example",)))
        await sender.send(mail(3))
        assert server.message_ids() == ids(1, 3)
        assert server.opens() == 2
        await sender.aclose()


async def test_idle_connections_are_closed_after_a_while_and_at_shutdown(tmp_path, monkeypatch):
    monkeypatch.setattr(smtp, "IDLE_SECONDS", 0.3)
    monkeypatch.setattr(smtp, "_REAP_SECONDS", 0.1)
    with smtp_server(tmp_path) as server:
        sender = SmtpEmailSender(settings(server))
        reaper = asyncio.create_task(sender.run())
        try:
            await sender.send(mail(1))
            await asyncio.sleep(1.0)
            assert server.quits() == 1  # closed (QUIT) once idle for IDLE_SECONDS
            await sender.send(mail(2))
            assert server.opens() == 2
        finally:
            reaper.cancel()  # the service's shutdown
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
        await asyncio.sleep(0.2)
        assert server.quits() == 2
        assert server.message_ids() == ids(1, 2)


async def test_starttls_and_auth_hold_on_reused_connections(tmp_path, tls):
    cert, key = tls
    with smtp_server(
        tmp_path, "--tls-cert", cert, "--tls-key", key, "--starttls", "--auth", f"{USER}:{PASSWORD}"
    ) as server:
        sender = SmtpEmailSender(
            settings(server, smtp_starttls=True, smtp_username=USER, smtp_password=SecretStr(PASSWORD))
        )
        for i in range(3):
            await sender.send(mail(i))
        assert server.message_ids() == ids(0, 1, 2)
        assert server.opens() == 1
        await sender.aclose()

        wrong = SmtpEmailSender(
            settings(server, smtp_starttls=True, smtp_username=USER, smtp_password=SecretStr("wrong"))
        )
        with pytest.raises(PermanentSendError, match="SMTP 535"):
            await wrong.send(mail(9))
        assert wrong._idle == []
        plain = SmtpEmailSender(settings(server))  # no STARTTLS: the server refuses MAIL
        with pytest.raises(PermanentSendError):
            await plain.send(mail(10))
        assert server.message_ids() == ids(0, 1, 2)


async def test_starttls_required_but_not_offered_is_refused_as_before(tmp_path):
    """Nothing is sent in the clear. (aiosmtplib reports this as a plain SMTPException, which
    ``classify`` has always counted transient — unchanged here, though the module docstring says
    permanent.)"""
    with smtp_server(tmp_path) as server:
        sender = SmtpEmailSender(settings(server, smtp_starttls=True))
        with pytest.raises(TransientSendError, match="STARTTLS"):
            await sender.send(mail(1))
        assert sender._idle == []
        assert server.message_ids() == []


async def test_implicit_tls_connections_are_reused(tmp_path, tls):
    cert, key = tls
    with smtp_server(tmp_path, "--tls-cert", cert, "--tls-key", key, "--implicit-tls") as server:
        sender = SmtpEmailSender(settings(server, smtp_tls=True))
        for i in range(3):
            await sender.send(mail(i))
        assert server.message_ids() == ids(0, 1, 2)
        assert server.opens() == 1
        await sender.aclose()
