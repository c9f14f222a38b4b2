"""The invitation e-mail text, in Swedish and English. Pure.

The input is deliberately narrow — the case reference, the due time, the plan URL and the language —
because that is all an invitation may say: *what* happened and *where* an authorised participant
reads more. E-mail is not a secure channel: no name, no personnummer, no health data. As a last line
of defence, text that would carry something shaped like a personal identity number is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from shared.identifiers import is_valid_person_identifier, luhn_check_digit

STOCKHOLM = ZoneInfo("Europe/Stockholm")

# 10 or 12 digits, optionally with - or + before the last four (YYMMDD-NNNN, YYYYMMDDNNNN, …)
PERSONAL_NUMBER = re.compile(r"(?<!\d)(?:\d{2})?\d{6}[-+]?\d{4}(?!\d)")
# UUIDs (case and plan ids in links) often hold long digit runs; they are identifiers we issue.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class PersonalDataInText(ValueError):
    """The rendered text would contain something shaped like a personnummer."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    body: str


_SV_MONTHS = (
    "januari", "februari", "mars", "april", "maj", "juni",
    "juli", "augusti", "september", "oktober", "november", "december",
)  # fmt: skip


def _is_person_number(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if len(digits) == 12:
        return is_valid_person_identifier(digits)
    # ten digits: the check digit is all we can test without the century
    return luhn_check_digit(digits[:9]) == int(digits[9])


def contains_personal_number(text: str) -> bool:
    """True if the text holds a valid personnummer/samordningsnummer (date and check digit).

    Only valid numbers count, and UUIDs are skipped: a guard that fires on any digit run would
    refuse lawful invitations whose plan link happens to contain one.
    """
    scrubbed = _UUID.sub(" ", text)
    return any(_is_person_number(m.group()) for m in PERSONAL_NUMBER.finditer(scrubbed))


def local_due(due_at: datetime) -> datetime:
    if due_at.tzinfo is None:
        raise ValueError("due time must carry a time zone")
    return due_at.astimezone(STOCKHOLM)


def _format_sv(dt: datetime) -> str:
    return f"{dt.day} {_SV_MONTHS[dt.month - 1]} {dt.year} kl. {dt:%H:%M} ({dt:%Z})"


_EN_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


def _format_en(dt: datetime) -> str:
    # month names spelled out here: strftime's %B follows the process locale
    return f"{dt.day} {_EN_MONTHS[dt.month - 1]} {dt.year}, {dt:%H:%M} Swedish time ({dt:%Z})"


def render_invitation(
    *, case_reference: str, invitation_due_at: datetime, plan_url: str, language: str = "sv"
) -> RenderedEmail:
    due = local_due(invitation_due_at)
    if language == "en":
        subject = f"Invitation to SIP planning – {case_reference}"
        body = (
            "Hello,\n\n"
            "Your organisation is invited to take part in drawing up a coordinated individual plan "
            "(samordnad individuell plan, SIP).\n\n"
            f"Case reference: {case_reference}\n"
            f"Deadline: {_format_en(due)}\n\n"
            "Read the case and the plan here (sign-in required, authorised participants only):\n"
            f"{plan_url}\n\n"
            "For the person's privacy this message contains no name, personal identity number or "
            "health information. Refer to the case reference when you get in touch.\n\n"
            "This message was sent automatically by sip-suite; replies are not read.\n"
        )
    elif language == "sv":
        subject = f"Kallelse till SIP-planering – {case_reference}"
        body = (
            "Hej,\n\n"
            "Er verksamhet kallas att delta i arbetet med en samordnad individuell plan (SIP).\n\n"
            f"Ärende: {case_reference}\n"
            f"Tidsfrist: {_format_sv(due)}\n\n"
            "Läs ärendet och planen här (inloggning krävs, endast behöriga deltagare):\n"
            f"{plan_url}\n\n"
            "Av hänsyn till den enskildes integritet innehåller meddelandet inga namn, "
            "personnummer eller uppgifter om hälsa. Ange ärendereferensen när ni hör av er.\n\n"
            "Meddelandet är skickat automatiskt av sip-suite och går inte att svara på.\n"
        )
    else:
        raise ValueError(f"unsupported language: {language!r}")
    if contains_personal_number(subject) or contains_personal_number(body):
        raise PersonalDataInText(
            "invitation text would contain a personal identity number (check case_reference and plan_url)"
        )
    return RenderedEmail(subject=subject, body=body)
