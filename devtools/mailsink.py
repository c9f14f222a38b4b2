"""A development mail sink: a real SMTP server (aiosmtpd) that keeps what arrives and shows it.

``python -m devtools.mailsink --smtp-port 1025 --http-port 8025 --dir var/mail``

- every message is written to ``DIR/<n>.eml``, with its envelope (sender, recipients, when it
  arrived) in ``DIR/<n>.json``; a restarted sink lists what is already there;
- ``GET /`` lists what arrived (HTML: date, recipients, subject, newest first), ``GET /messages`` the
  same as JSON, ``GET /messages/<n>`` shows one message in the browser (its headers, its text, and
  the calendar invitation's time in Europe/Stockholm, place and summary), ``GET /messages/<n>.eml``
  downloads it as it arrived. Tests use it as the real SMTP server process; ``make run`` starts it so
  a new user sees the invitations without configuring a mail server.

Every value shown is HTML-escaped, and the pages carry a Content-Security-Policy that allows no
script, no remote resource and no form: a message's content is the sender's, not the sink's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email
import email.parser
import email.policy
import hashlib
import html
import json
import os
import re
import signal
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiosmtpd.controller import Controller

STOCKHOLM = ZoneInfo("Europe/Stockholm")

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;max-width:60rem}"
    "table{border-collapse:collapse}td,th{border:1px solid #999;padding:.3rem .5rem;text-align:left;"
    "vertical-align:top}pre{white-space:pre-wrap;background:#f4f4f4;padding:.6rem}"
)
# only this stylesheet: no script, no image, no frame, no form, nothing fetched from elsewhere
CSP = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = (
    f"Content-Security-Policy: {CSP}\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Cache-Control: no-store\r\n"
)
_SHOWN_HEADERS = ("From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "Content-Language")
_URL = re.compile(r"https?://[^\s<>\"']+")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


class _Store:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        # what arrived before a restart is listed too; numbering continues, nothing is overwritten
        self.items: list[dict[str, Any]] = [self._load(p) for p in sorted(self.dir.glob("*.eml"))]
        self.offset = len(self.items)

    def _load(self, eml: Path) -> dict[str, Any]:
        try:
            envelope = json.loads(eml.with_suffix(".json").read_text())
        except (OSError, ValueError):
            envelope = {"from": "", "to": [], "received": None}
        return self._summary(int(eml.stem), envelope, eml.read_bytes())

    @staticmethod
    def _summary(n: int, envelope: dict[str, Any], data: bytes) -> dict[str, Any]:
        # the headers are all the listing shows: parsing the whole message (calendar parts and all)
        # would cost this stand-in more CPU than the service that sent it
        msg = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)

        def header(name: str) -> str:
            try:
                return str(msg.get(name, ""))
            except (ValueError, TypeError, IndexError):  # a malformed header is shown, not fatal
                return ""

        return {
            "n": n,
            "from": envelope.get("from", ""),
            "to": list(envelope.get("to") or []) or [a for _, a in getaddresses([header("To")]) if a],
            "received": envelope.get("received"),
            "date": header("Date"),
            "subject": header("Subject"),
            "message_id": header("Message-ID"),
        }

    def path(self, n: int) -> Path:
        return self.dir / f"{n:06d}.eml"

    def add(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        n = self.offset + 1
        envelope = {"from": mail_from, "to": rcpt_tos, "received": datetime.now(UTC).isoformat()}
        self.path(n).with_suffix(".json").write_text(json.dumps(envelope))
        # last, and whole: written beside it and renamed into place, so a listed .eml always has its
        # envelope and a reader polling the directory never sees a half-written message
        partial = self.path(n).with_suffix(".eml.part")
        partial.write_bytes(data)
        os.replace(partial, self.path(n))
        self.items.append(self._summary(n, envelope, data))
        self.offset = n


class _Handler:
    def __init__(self, store: _Store) -> None:
        self.store = store

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.store.add(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        return "250 Message accepted for delivery"


# ---- pages ---------------------------------------------------------------------------------------


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style>{body}</html>"
    ).encode()


def _shown_date(item: dict[str, Any]) -> str:
    for raw in (item.get("date"), item.get("received")):
        if not raw:
            continue
        try:
            when = parsedate_to_datetime(raw) if raw == item.get("date") else datetime.fromisoformat(raw)
        except (TypeError, ValueError):
            continue
        if when.tzinfo is not None:
            when = when.astimezone(STOCKHOLM)
        return when.strftime("%Y-%m-%d %H:%M")
    return ""


def list_page(items: list[dict[str, Any]]) -> bytes:
    rows = "".join(
        f"<tr><td>{_e(_shown_date(m))}</td><td>{_e(', '.join(m['to']))}</td>"
        f"<td><a href='/messages/{int(m['n'])}'>{_e(m['subject'] or '(no subject)')}</a></td>"
        f"<td><a href='/messages/{int(m['n'])}.eml'>.eml</a></td></tr>"
        for m in reversed(items)
    )
    return _page(
        "sip-suite mail sink",
        "<h1>sip-suite development mail sink</h1>"
        f"<p>{len(items)} message(s) received, newest first. Times in Europe/Stockholm.</p>"
        "<table><tr><th>Date</th><th>To</th><th>Subject</th><th>Raw</th></tr>"
        f"{rows}</table>",
    )


def _linked(text: str) -> str:
    """``text`` escaped, its http(s) addresses as links to exactly that address."""
    out, last = [], 0
    for m in _URL.finditer(text):
        out.append(_e(text[last : m.start()]))
        url = m.group(0)
        out.append(f"<a href='{_e(url)}' rel=noreferrer>{_e(url)}</a>")
        last = m.end()
    out.append(_e(text[last:]))
    return "".join(out)


def _when(value: Any) -> str:
    """An iCalendar DTSTART/DTEND as the participants read it: in Europe/Stockholm."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.strftime("%Y-%m-%d %H:%M") + " (floating time)"
        return value.astimezone(STOCKHOLM).strftime("%Y-%m-%d %H:%M %Z")
    if isinstance(value, date):
        return value.isoformat() + " (all day)"
    return str(value)


def calendar_events(ics: str) -> list[dict[str, str]]:
    """Each VEVENT's summary, start, end, place and description, as shown on the message page."""
    from icalendar import Calendar  # only a message page needs it

    events = []
    for ev in Calendar.from_ical(ics).walk("VEVENT"):
        start, end = ev.get("DTSTART"), ev.get("DTEND")
        events.append(
            {
                "summary": str(ev.get("SUMMARY", "")),
                "start": _when(start.dt) if start is not None else "",
                "end": _when(end.dt) if end is not None else "",
                "location": str(ev.get("LOCATION", "")),
                "url": str(ev.get("URL", "")),
                "organizer": str(ev.get("ORGANIZER", "")),
                "description": str(ev.get("DESCRIPTION", "")),
            }
        )
    return events


def message_page(n: int, data: bytes) -> bytes:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    heads = []
    for name in _SHOWN_HEADERS:
        for value in msg.get_all(name) or []:
            try:
                shown = str(value)
            except (ValueError, TypeError, IndexError):
                shown = "(unreadable header)"
            heads.append(f"<tr><th>{_e(name)}</th><td>{_e(shown)}</td></tr>")
    texts, calendars, parts = [], [], []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        filename = part.get_filename()
        parts.append(f"<li>{_e(ctype)}{' – ' + _e(filename) if filename else ''}</li>")
        if filename or part.get_content_disposition() == "attachment":
            continue  # the invitation.ics attachment repeats the text/calendar part
        try:
            content = part.get_content()
        except (LookupError, ValueError):
            content = None
        if not isinstance(content, str):
            continue
        if ctype == "text/plain":
            texts.append(f"<pre>{_linked(content)}</pre>")
        elif ctype == "text/calendar":
            calendars.append(content)
    invitation = []
    for ics in calendars:
        try:
            events = calendar_events(ics)
        except ValueError:
            invitation.append("<p>The calendar part could not be read.</p>")
            continue
        for ev in events:
            rows = [
                ("Summary", _e(ev["summary"])),
                ("Time", _e(ev["start"] + (" – " + ev["end"] if ev["end"] else ""))),
                ("Place", _linked(ev["location"]) if ev["location"] else "(none given)"),
            ]
            if ev["url"]:
                rows.append(("Link", _linked(ev["url"])))
            if ev["organizer"]:
                rows.append(("Organizer", _e(ev["organizer"])))
            if ev["description"]:
                rows.append(("Description", f"<pre>{_linked(ev['description'])}</pre>"))
            invitation.append(
                "<table class=event>"
                + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
                + "</table>"
            )
    subject = str(msg.get("Subject", ""))
    body = (
        "<p><a href='/'>← all messages</a> · "
        f"<a href='/messages/{n}.eml'>download .eml</a></p>"
        f"<h1>{_e(subject or '(no subject)')}</h1>"
        f"<table>{''.join(heads)}</table>"
    )
    if invitation:
        body += "<h2>Calendar invitation</h2><p>Times in Europe/Stockholm.</p>" + "".join(invitation)
    body += "<h2>Text</h2>" + ("".join(texts) or "<p>(no text part)</p>")
    body += f"<h2>Parts</h2><ul>{''.join(parts)}</ul>"
    return _page(subject or "message", body)


# ---- HTTP ----------------------------------------------------------------------------------------


def route(store: _Store, path: str) -> tuple[str, str, bytes, str]:
    """(status, content type, body, extra headers) for a GET of ``path``."""
    path = path.split("?", 1)[0]
    html_type = "text/html; charset=utf-8"
    if path in ("/", "/index.html"):
        return "200 OK", html_type, list_page(store.items), _SECURITY_HEADERS
    if path == "/messages":
        return "200 OK", "application/json", json.dumps(store.items).encode(), ""
    if path == "/healthz":
        return "200 OK", "application/json", b'{"status":"ok"}', ""
    m = re.fullmatch(r"/messages/(\d{1,9})(\.eml)?", path)
    if m:
        n = int(m.group(1))
        try:
            data = store.path(n).read_bytes()
        except FileNotFoundError:
            data = None
        if data is not None and m.group(2):
            disposition = f'Content-Disposition: attachment; filename="{n:06d}.eml"\r\n'
            return "200 OK", "message/rfc822", data, disposition + _SECURITY_HEADERS
        if data is not None:
            return "200 OK", html_type, message_page(n, data), _SECURITY_HEADERS
    return "404 Not Found", "text/plain; charset=utf-8", b"not found", _SECURITY_HEADERS


async def _http(store: _Store, host: str, port: int) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode("latin-1").split()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            method = line[0] if line else ""
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only"
                extra = "Allow: GET, HEAD\r\n"
            else:
                try:
                    status, ctype, body, extra = route(store, line[1] if len(line) > 1 else "/")
                except Exception as exc:  # a message the page cannot show is not a reason to stop serving
                    status, ctype, extra = "500 Internal Server Error", "text/plain", ""
                    body = f"could not show this message: {type(exc).__name__}".encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}Connection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else body)
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
