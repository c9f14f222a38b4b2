"""A development mail sink: a real SMTP server (aiosmtpd) that keeps what arrives and shows it.

``python -m devtools.mailsink --smtp-port 1025 --http-port 8025 --dir var/mail``

- every message is written to ``DIR/<n>.eml`` (and kept in memory for the HTTP view);
- ``GET /`` lists what arrived (HTML), ``GET /messages`` the same as JSON, ``GET /messages/<n>`` the
  raw message. Tests use it as the real SMTP server process; ``make run`` starts it so a new user
  sees the invitations without configuring a mail server.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.parser
import email.policy
import html
import json
import signal
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _Store:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.items: list[dict[str, Any]] = []
        # continue numbering after a restart, never overwrite what already arrived
        self.offset = len(list(self.dir.glob("*.eml")))

    def add(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        n = self.offset + len(self.items) + 1
        (self.dir / f"{n:06d}.eml").write_bytes(data)
        # the headers are all the listing shows: parsing the whole message (calendar parts and all)
        # would cost this stand-in more CPU than the service that sent it
        msg = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
        self.items.append(
            {
                "n": n,
                "from": mail_from,
                "to": rcpt_tos,
                "subject": str(msg.get("Subject", "")),
                "message_id": str(msg.get("Message-ID", "")),
            }
        )


class _Handler:
    def __init__(self, store: _Store) -> None:
        self.store = store

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.store.add(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        return "250 Message accepted for delivery"


async def _http(store: _Store, host: str, port: int) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode("latin-1").split()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            path = line[1] if len(line) > 1 else "/"
            status, ctype, body = "200 OK", "text/html; charset=utf-8", b""
            if path == "/messages":
                ctype, body = "application/json", json.dumps(store.items).encode()
            elif path.startswith("/messages/"):
                try:
                    n = int(path.rsplit("/", 1)[1])
                    body = (store.dir / f"{n:06d}.eml").read_bytes()
                    ctype = "message/rfc822"
                except (ValueError, FileNotFoundError):
                    status, body = "404 Not Found", b"not found"
            elif path in ("/", "/index.html"):
                rows = "".join(
                    f"<tr><td><a href='/messages/{m['n']}'>{m['n']}</a></td>"
                    f"<td>{html.escape(', '.join(m['to']))}</td>"
                    f"<td>{html.escape(m['subject'])}</td></tr>"
                    for m in reversed(store.items)
                )
                body = (
                    "<!doctype html><meta charset=utf-8><title>sip-suite mail sink</title>"
                    "<h1>sip-suite development mail sink</h1>"
                    f"<p>{len(store.items)} message(s) received.</p>"
                    f"<table border=1 cellpadding=4><tr><th>#</th><th>To</th><th>Subject</th></tr>"
                    f"{rows}</table>"
                ).encode()
            elif path == "/healthz":
                ctype, body = "application/json", b'{"status":"ok"}'
            else:
                status, body = "404 Not Found", b"not found"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def serve(host: str, smtp_port: int, http_port: int, directory: Path) -> None:
    store = _Store(directory)
    controller = Controller(_Handler(store), hostname=host, port=smtp_port)
    controller.start()
    server = await _http(store, host, http_port) if http_port else None
    print(
        f"mailsink: SMTP on {host}:{smtp_port}"
        + (f", web view on http://{host}:{http_port}/" if server else ""),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    controller.stop()
    if server:
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--smtp-port", type=int, default=1025)
    ap.add_argument("--http-port", type=int, default=8025)
    ap.add_argument("--dir", default="var/mail")
    a = ap.parse_args()
    asyncio.run(serve(a.host, a.smtp_port, a.http_port, Path(a.dir)))


if __name__ == "__main__":
    main()
