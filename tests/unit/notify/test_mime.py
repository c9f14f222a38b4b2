"""The e-mail as it arrives: the compat32 builder against the ``EmailMessage`` one it replaced.

``reference_message`` is the former ``build_message`` (``EmailMessage``, default policy), kept here
as the yardstick, and ``reference_wire`` what aiosmtplib's ``send_message`` made of it. Both are
parsed as a mail client does (``email.policy.default``); headers, MIME structure, parameters,
transfer encodings and contents must be the same. One difference is intended: ``Content-Language``
now arrives — the old builder set it, but ``set_content`` removed it again (it clears every
``Content-*`` header), so no mail ever carried it.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from email.policy import Compat32
from email.utils import formatdate, parsedate_to_datetime

import pytest
from aiosmtplib.email import flatten_message
from aiosmtplib.protocol import normalize_message_line_endings

from services.notify.adapters.smtp import _WIRE, build_message, envelope_sender, flatten, needs_smtputf8
from services.notify.ports import CalendarAttachment, OutgoingEmail
from tests.unit.notify.test_calendar import WINTER, sent_mails
from tests.unit.notify.test_subscriber_and_handler import invitation

SOC, VC = "SE2120001-SOC0180", "SE2321000016-VC001"
FROM = "sip-suite@localhost"
ICS = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//sip-suite//notify//SV\r\nMETHOD:REQUEST\r\n"
    "BEGIN:VEVENT\r\nSUMMARY:SIP-möte – SIP-2026-4F3A9C\r\nLOCATION:Vårdcentralen Södermalm\\, rum 3\r\n"
    "UID:sip-case-1@sip-suite\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)


def reference_message(mail: OutgoingEmail, mail_from: str) -> EmailMessage:
    """The builder as it was before the compat32 one (do not change: it is the yardstick)."""
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = ", ".join(mail.to)
    msg["Subject"] = mail.subject
    msg["Message-ID"] = mail.message_id
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Content-Language"] = mail.language
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(mail.body)
    if mail.calendar is not None:
        msg.add_alternative(mail.calendar.ics, subtype="calendar", params={"method": mail.calendar.method})
        msg.add_attachment(
            mail.calendar.ics.encode("utf-8"),
            maintype="application",
            subtype="ics",
            filename=mail.calendar.filename,
        )
    return msg


def reference_wire(mail: OutgoingEmail, mail_from: str, cte_type: str) -> bytes:
    """What aiosmtplib's send_message sent of it (DATA goes with CRLF line ends)."""
    utf8 = needs_smtputf8(envelope_sender(mail_from), mail.to)
    raw = flatten_message(reference_message(mail, mail_from), utf8=utf8, cte_type=cte_type)
    return normalize_message_line_endings(raw)


def wire(mail: OutgoingEmail, mail_from: str = FROM, cte_type: str = "8bit") -> bytes:
    """What the sender sends of the new builder's message (sendmail's DATA: CRLF line ends)."""
    return normalize_message_line_endings(flatten(build_message(mail, mail_from), cte_type=cte_type))


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def header_lines(raw: bytes, name: str) -> str:
    """A top-level header as written (folded), line ends normalised."""
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8")
    m = re.search(rf"^{name}: .*?(?=\n\S|\Z)", head, re.MULTILINE | re.DOTALL)
    assert m, name
    return m.group(0)


def parts(msg: EmailMessage) -> list[dict[str, object]]:
    out = []
    for p in msg.walk():
        params = {k: v for k, v in p["Content-Type"].params.items() if k != "boundary"}
        info: dict[str, object] = {
            "type": p.get_content_type(),
            "params": params,
            "disposition": p.get_content_disposition(),
            "filename": p.get_filename(),
            "cte": p.get("Content-Transfer-Encoding"),
        }
        if not p.is_multipart():
            info["content"] = p.get_content()
            info["encoded"] = p.get_payload()
        out.append(info)
    return out


def assert_same_mail(old_raw: bytes, new_raw: bytes, language: str) -> None:
    old, new = parse(old_raw), parse(new_raw)
    assert "Content-Language" not in old  # what the old builder lost
    assert new["Content-Language"] == language
    top = ("From", "To", "Subject", "Message-ID", "Auto-Submitted", "MIME-Version")
    assert [(h, str(old[h])) for h in top] == [(h, str(new[h])) for h in top]
    assert [k for k in new.keys() if k != "Content-Language"] == list(old.keys())
    for h in ("From", "To", "Subject"):  # written the same way, encoded words and folding included
        assert header_lines(new_raw, h) == header_lines(old_raw, h)
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000", new["Date"])
    assert abs((parsedate_to_datetime(new["Date"]) - parsedate_to_datetime(old["Date"])).total_seconds()) < 5
    assert parts(new) == parts(old)
    assert not new.defects and all(not p.defects for p in new.walk())


def mail(**kw: object) -> OutgoingEmail:
    fields: dict[str, object] = dict(
        message_id="<0f8e7a52-5d0e-5b7c-9f57-0e1c6f0a3a11@sip-suite>",
        to=("sip-socialtjanst@stockholm.example",),
        subject="Kallelse till SIP-planering – SIP-2026-4F3A9C",
        body="Hej,\n\nÄrende: SIP-2026-4F3A9C\nPlats: Vårdcentralen Södermalm, rum 3\n",
        language="sv",
    )
    fields.update(kw)
    return OutgoingEmail(**fields)  # type: ignore[arg-type]


LONG_LINE = "Läs ärendet och planen här (inloggning krävs, endast behöriga deltagare): " * 3
CASES = {
    "short-swedish": mail(),
    "ascii-only": mail(subject="SIP case closed", body="Hello,\nthe case is closed.\n", language="en"),
    "long-lines-qp": mail(body=f"Hej,\n{LONG_LINE}\nhttps://sip.example/fhir/CarePlan/abc\n"),
    "mostly-non-ascii-base64": mail(body=("åäö ÅÄÖ éü " * 20 + "\n") * 3),
    "from-and-dots": mail(body="From the unit:\nFrom here on\n.\n..leading dots\nslut\n"),
    "long-subject": mail(
        subject="Påminnelse om SIP-möte – " + "Vårdcentralen Södermalm och socialtjänsten " * 3
    ),
    "many-recipients": mail(to=tuple(f"mottagare-{i}@vc-sodermalm.example" for i in range(6))),
    "calendar": mail(calendar=CalendarAttachment(ICS)),
    "calendar-long-lines": mail(body=f"Hej,\n{LONG_LINE}\n", calendar=CalendarAttachment(ICS)),
}


@pytest.mark.parametrize("cte_type", ["8bit", "7bit"])  # a server with and without 8BITMIME
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_new_builder_sends_what_the_old_one_sent(case, cte_type):
    m = CASES[case]
    assert_same_mail(reference_wire(m, FROM, cte_type), wire(m, FROM, cte_type), m.language)


@pytest.mark.parametrize(
    "mail_from", ["SIP-sviten <sip@region.example>", "Region Östergötland <sip@region.example>"]
)
def test_a_display_name_in_from_arrives_the_same(mail_from):
    m = CASES["calendar"]
    assert envelope_sender(mail_from) == "sip@region.example"
    assert_same_mail(reference_wire(m, mail_from, "8bit"), wire(m, mail_from), "sv")


def test_a_non_ascii_address_is_written_as_utf8_like_before():
    """RFC 6532 (the envelope needs SMTPUTF8): headers in raw UTF-8, as email.policy.SMTPUTF8 wrote them."""
    m = mail(to=("sip@vårdcentralen.example",))
    assert needs_smtputf8(envelope_sender(FROM), m.to)
    new_raw = wire(m)
    assert "To: sip@vårdcentralen.example".encode() in new_raw
    assert_same_mail(reference_wire(m, FROM, "8bit"), new_raw, "sv")


async def test_the_invitations_of_the_real_pipeline_arrive_the_same(app, settings, clock, sender):
    cmd = invitation(SOC, VC, meeting_start=WINTER, meeting_location="Vårdcentralen Södermalm, rum 3")
    mails = await sent_mails(app, settings, clock, sender, cmd)
    assert len(mails) == 2 and all(m.calendar is not None for m in mails.values())
    for m in mails.values():
        for cte_type in ("8bit", "7bit"):
            assert_same_mail(reference_wire(m, FROM, cte_type), wire(m, FROM, cte_type), "sv")


def test_short_ascii_headers_are_written_exactly_as_compat32_writes_them():
    plain = Compat32(mangle_from_=False)
    for m in CASES.values():
        for part in build_message(m, FROM).walk():
            for name, value in part.raw_items():
                if isinstance(value, str):
                    assert _WIRE.fold_binary(name, value) == plain.fold_binary(name, value), name


def test_bytes_of_the_message_are_what_goes_on_the_wire():
    msg = build_message(CASES["calendar"], FROM)
    assert bytes(msg) == flatten(msg)
    assert flatten(msg) == flatten(msg)  # writing it does not change it (a retry sends the same)
