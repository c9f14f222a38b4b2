"""A real SMTP server process (aiosmtpd) for the connection-pool tests, which counts what it sees.

``python -m tests.integration.notify.smtp_server --port P --dir D [options]``

- every accepted message is written to ``D/<n>.eml``; once it listens, ``ready`` is appended to
  ``D/events``, then ``open`` for every new TCP connection and ``quit`` for every QUIT;
- ``--idle-timeout S``: the server closes a connection idle for S seconds (without a word);
- ``--drop-reused``: a connection that already carried a mail is closed, without a reply, at the
  next ``MAIL FROM`` (a server that closed it "while idle", seen only on the first command);
- ``--drop-after-data``: a connection that already carried a mail is closed, without a reply, once
  the next message's data arrived (that mail is not kept; the client cannot know);
- a recipient whose address contains ``avvisas`` is refused with 550;
- ``--tls-cert/--tls-key`` with ``--starttls`` (STARTTLS required) or ``--implicit-tls``;
  ``--auth USER:PASSWORD``: AUTH required (over TLS).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, directory: Path, *, drop_reused: bool, drop_after_data: bool) -> None:
        self.dir = directory
        self.drop_reused = drop_reused
        self.drop_after_data = drop_after_data
        self.count = 0

    def event(self, what: str) -> None:
        with open(self.dir / "events", "a", encoding="ascii") as f:
            f.write(what + "\n")

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.drop_reused and getattr(session, "mails", 0) >= 1:
            server.transport.close()
            return "421 gone"  # never written: the transport is closed
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if "avvisas" in address:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.drop_after_data and getattr(session, "mails", 0) >= 1:
            server.transport.close()
            return "451 gone"  # never written
        self.count += 1
        (self.dir / f"{self.count:06d}.eml").write_bytes(envelope.original_content)
        session.mails = getattr(session, "mails", 0) + 1
        return "250 Message accepted for delivery"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.event("quit")
        return "221 Bye"


class CountingController(Controller):
    def factory(self) -> Any:
        self.handler.event("open")
        return super().factory()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--idle-timeout", type=float, default=300.0)
    ap.add_argument("--drop-reused", action="store_true")
    ap.add_argument("--drop-after-data", action="store_true")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--starttls", action="store_true")
    ap.add_argument("--implicit-tls", action="store_true")
    ap.add_argument("--auth")
    a = ap.parse_args()
    directory = Path(a.dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "events").touch()
    handler = Handler(directory, drop_reused=a.drop_reused, drop_after_data=a.drop_after_data)
    kwargs: dict[str, Any] = {"timeout": a.idle_timeout}
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        if a.implicit_tls:
            kwargs["ssl_context"] = ctx
        else:
            kwargs["tls_context"] = ctx
            kwargs["require_starttls"] = a.starttls
    if a.auth:
        user, password = a.auth.split(":", 1)

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                user.encode(),
                password.encode(),
            )
            return AuthResult(success=ok, handled=False)  # a failure: aiosmtpd replies 535

        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=True)
    controller = CountingController(handler, hostname="127.0.0.1", port=a.port, **kwargs)

    async def serve() -> None:
        controller.start()  # (it connects once to itself: counted before "ready")
        handler.event("ready")
        print(f"smtp_server: listening on 127.0.0.1:{a.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        controller.stop()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
