"""The development mail sink shows each message in the browser (issue 16).

The real sink runs as a process (``python -m devtools.mailsink``); the invitation is built by notify's
own SMTP adapter (``build_message``, with the calendar from ``invitation_ics``) and sent over SMTP with
smtplib; the pages are read over HTTP. Text the sender chose (subject, place) carries HTML so the test
sees it escaped, not interpreted.
"""

from __future__ import annotations

import json
import re
import smtplib
import urllib.error
import urllib.request
from datetime import UTC, datetime
from email.message import EmailMessage
from html.parser import HTMLParser
from uuid import UUID

import pytest

from services.notify.adapters.smtp import build_message, flatten
from services.notify.ics import CalendarParty, invitation_ics
from services.notify.ports import CalendarAttachment, OutgoingEmail
from services.notify.templates import Meeting
from tests.support.infra import MailSink, mail_sink

SUBJECT = "Kallelse till SIP-möte <script>alert(1)</script>"
PLACE = 'Vårdcentralen <b>Norr</b> & "Syd", rum 3'
PLAN_URL = "http://127.0.0.1:8080/plan/SIP-2026-0042"


class _Text(HTMLParser):
    """The page's visible text and its tags (what a browser would build from it)."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self.links.append(dict(attrs).get("href") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Text:
    p = _Text()
    p.feed(page)
    return p


def get(sink: MailSink, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sink.http_port}{path}", timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def invitation(to: str) -> bytes:
    ics = invitation_ics(
        case_id=UUID("7b0e9a52-3f43-4a8c-9d6e-1a2b3c4d5e6f"),
        case_reference="SIP-2026-0042",
        # 09:00 UTC in March is 10:00 in Stockholm (CET)
        meeting=Meeting(start=datetime(2026, 3, 10, 9, 0, tzinfo=UTC), location=PLACE),
        organizer=CalendarParty("Socialtjänsten Exempelby", "SE2321000016-AAAA", "sip@kommun.example"),
        attendees=(CalendarParty("Vårdcentralen Norr", "SE2321000016-BBBB", to),),
        plan_url=PLAN_URL,
        issued_at=datetime(2026, 3, 1, 8, 0, tzinfo=UTC),
    )
    mail = OutgoingEmail(
        message_id="<n-1@sip-suite>",
        to=(to,),
        subject=SUBJECT,
        body=f"Hej!\nNi kallas till ett SIP-möte.\nLäs ärendet och planen: {PLAN_URL}\n",
        calendar=CalendarAttachment(ics),
    )
    # CRLF on the wire, as aiosmtplib sends it (smtplib sends bytes unchanged)
    return flatten(build_message(mail, "SIP <sip@kommun.example>")).replace(b"\n", b"\r\n")


def plain(subject: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "sip@kommun.example", to, subject
    msg["Date"] = "Tue, 10 Mar 2026 12:00:00 +0000"
    msg.set_content("just text")
    return msg


@pytest.fixture
def sink(tmp_path):
    with mail_sink(tmp_path) as s:
        yield s


def test_an_invitation_is_listed_and_shown_with_its_time_place_and_summary_escaped(sink):
    raw = invitation("vc-norr@region.example")
    with smtplib.SMTP("127.0.0.1", sink.smtp_port, timeout=10) as s:
        s.sendmail("sip@kommun.example", ["vc-norr@region.example"], raw)
        s.send_message(plain("Second <i>mail</i>", "other@kommun.example"))
    assert len(sink.wait_for(2)) == 2

    status, headers, body = get(sink, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
    page = body.decode()
    assert "<script>" not in page and "<i>mail</i>" not in page
    listing = parse(page)
    assert "script" not in listing.tags and "i" not in listing.tags
    text = "".join(listing.text)
    # newest first: the plain mail, then the invitation; each with recipient, date and subject
    assert text.index("Second <i>mail</i>") < text.index(SUBJECT)
    assert "vc-norr@region.example" in text and "other@kommun.example" in text
    assert "2026-03-10 13:00" in text  # the plain mail's Date, in Stockholm
    assert "/messages/1" in listing.links and "/messages/2" in listing.links

    status, headers, body = get(sink, "/messages/1")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "Content-Disposition" not in headers  # shown, not downloaded
    assert headers["Content-Security-Policy"] == csp
    page = body.decode()
    assert "<script>" not in page and "<b>Norr</b>" not in page
    assert "&lt;b&gt;Norr&lt;/b&gt; &amp; &quot;Syd&quot;" in page
    shown = parse(page)
    assert "script" not in shown.tags and "b" not in shown.tags
    text = "".join(shown.text)
    assert SUBJECT in text
    assert "vc-norr@region.example" in text and "sip@kommun.example" in text  # To, From
    assert "<n-1@sip-suite>" in text
    assert "Ni kallas till ett SIP-möte." in text  # the text part
    assert "2026-03-10 10:00 CET" in text  # DTSTART in Europe/Stockholm
    assert PLACE in text
    assert "SIP-möte – SIP-2026-0042" in text  # SUMMARY
    assert "invite.ics" in text  # the attachment is named among the parts
    assert PLAN_URL in shown.links  # the plan link left as it is, as a link

    status, headers, body = get(sink, "/messages/1.eml")
    assert status == 200 and headers["Content-Type"] == "message/rfc822"
    assert headers["Content-Disposition"] == 'attachment; filename="000001.eml"'
    assert body.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")

    assert json.loads(get(sink, "/messages")[2])[0]["to"] == ["vc-norr@region.example"]
    assert json.loads((sink.directory / "000001.json").read_text())["to"] == ["vc-norr@region.example"]
    for missing in ("/messages/9", "/messages/9.eml", "/messages/x", "/messages/1/../../etc"):
        assert get(sink, missing)[0] == 404, missing
    assert headers["X-Content-Type-Options"] == "nosniff"
    post = urllib.request.Request(f"http://127.0.0.1:{sink.http_port}/messages/1", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert refused.value.code == 405


def test_a_restarted_sink_still_lists_and_shows_what_arrived(sink):
    with smtplib.SMTP("127.0.0.1", sink.smtp_port, timeout=10) as s:
        s.send_message(plain("before the restart", "a@kommun.example"))
    assert len(sink.wait_for(1)) == 1
    sink.proc.stop()
    sink.proc.start()
    with smtplib.SMTP("127.0.0.1", sink.smtp_port, timeout=10) as s:
        s.send_message(plain("after the restart", "b@kommun.example"))
    assert len(sink.wait_for(2)) == 2
    text = "".join(parse(get(sink, "/")[2].decode()).text)
    assert re.search(r"after the restart.*before the restart", text, re.S)
    assert "a@kommun.example" in text and "b@kommun.example" in text
    assert "before the restart" in "".join(parse(get(sink, "/messages/1")[2].decode()).text)
