"""The notification texts, in Swedish and English, plain language. Pure.

Every kind of notification has one render function (see :data:`RENDERERS`) returning the e-mail
subject and body and a short SMS text. The inputs are deliberately narrow — a case reference, times,
links, codes from fixed sets, the person's interpreter language as a code and the person's meeting
needs (:class:`~shared.contracts.MeetingNeeds`: yes/no, minutes, short practical texts; the
"Inför mötet" block of every notice a participant acts on) — because that is all a notification may
say: *what* happened, *what to prepare* and *where* an authorised participant reads more. E-mail and
SMS are not secure channels: no name, no personnummer, no health data.

Two last lines of defence run over every rendered text:

- anything shaped like a valid personal identity number refuses the text (:class:`PersonalDataInText`);
- anything that looks like health data — an ICD-10-shaped code or a common diagnosis word — refuses
  it too (:class:`HealthDataInText`). The free-text inputs (the meeting place, the short texts of
  the meeting needs) can only come through these guards; a code such as the interpreter language
  is mapped to a name and can carry no text at all. An interpreter need is a language need, not health data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from shared.clock import STOCKHOLM
from shared.contracts import MeetingNeeds
from shared.identifiers import PERSONAL_NUMBER_IN_TEXT as PERSONAL_NUMBER
from shared.languages import InvalidLanguageCode, interpreter_language_name
from shared.text_guards import contains_health_data, contains_personal_number

__all__ = ["PERSONAL_NUMBER", "contains_health_data", "contains_personal_number"]  # re-exported


# a case reference we issue: letters, digits, dashes (SIP-2026-4F3A9C)
_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_.]{0,63}$")
_URL = re.compile(r"^https?://[^\s<>\"']{1,500}$")

Kind = Literal[
    "invitation",
    "reminder",
    "plan-established",
    "follow-up-due",
    "deadline-escalation",
    "consent-withdrawn",
    "case-closed",
]
KINDS: tuple[Kind, ...] = (
    "invitation",
    "reminder",
    "plan-established",
    "follow-up-due",
    "deadline-escalation",
    "consent-withdrawn",
    "case-closed",
)
Deadline = Literal["admission-notice", "invitation", "meeting", "follow-up", "consent-expiry", "other"]
WithdrawalCause = Literal["withdrawal", "cancellation"]
ClosedReason = Literal["plan-completed", "person-ended", "consent-withdrawn", "other"]


class UnsafeText(ValueError):
    """A notification text would carry something it must not; the message names the rule only."""


class PersonalDataInText(UnsafeText):
    """The rendered text would contain something shaped like a personnummer."""


class HealthDataInText(UnsafeText):
    """The rendered text would contain something that looks like health data (a diagnosis)."""


@dataclass(frozen=True)
class RenderedEmail:
    """One notification's texts: e-mail subject and body, and the short SMS text."""

    subject: str
    body: str
    sms: str = ""


Rendered = RenderedEmail


@dataclass(frozen=True)
class Meeting:
    """A SIP meeting. ``video_url`` set means the meeting is held (also) remotely."""

    start: datetime
    end: datetime | None = None
    location: str | None = None
    video_url: str | None = None

    @property
    def remote(self) -> bool:
        return self.video_url is not None


_SV_MONTHS = (
    "januari", "februari", "mars", "april", "maj", "juni",
    "juli", "augusti", "september", "oktober", "november", "december",
)  # fmt: skip
_EN_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_SV_WEEKDAYS = ("måndag", "tisdag", "onsdag", "torsdag", "fredag", "lördag", "söndag")
_EN_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


# ---- guards (shared.text_guards: planning refuses the same at entry) ----------------------------
def check_text(*texts: str) -> None:
    """Refuse texts carrying a personnummer or something that looks like health data."""
    for text in texts:
        if contains_personal_number(text):
            raise PersonalDataInText(
                "notification text would contain a personal identity number "
                "(check case_reference, links and meeting place)"
            )
        if contains_health_data(text):
            raise HealthDataInText(
                "notification text would contain what looks like health data "
                "(check case_reference, links and meeting place)"
            )


def _reference(value: str) -> str:
    if not _REFERENCE.match(value):
        raise UnsafeText("case_reference: only letters, digits and - _ . are allowed (max 64)")
    return value


def _url(value: str, field: str) -> str:
    if not _URL.match(value):
        raise UnsafeText(f"{field}: must be an http(s) link without spaces")
    return value


def _place(value: str | None) -> str | None:
    if value is None:
        return None
    cleaned = " ".join(value.split())
    if not cleaned:
        return None
    if len(cleaned) > 160 or any(ord(c) < 32 for c in value if c not in "\t\n\r"):
        raise UnsafeText("meeting_location: one line of at most 160 characters")
    return cleaned


def interpreter_line(code: str | None, language: str) -> str | None:
    if not code:
        return None
    try:
        name = interpreter_language_name(code, language)
    except InvalidLanguageCode as exc:
        raise UnsafeText(str(exc)) from None
    if language == "sv":
        return f"Tolk: {name} behövs"
    return f"Interpreter: {name} needed"


# ---- the person's meeting needs: the "Inför mötet" block (issue #22) ------------------------------
_NEEDS_HEADING = {"sv": "Inför mötet:", "en": "Before the meeting:"}


def _need_text(value: str | None, field: str) -> str | None:
    """A short practical text from the person's needs: one line; guarded like the meeting place."""
    if value is None:
        return None
    cleaned = " ".join(value.split())
    if not cleaned:
        return None
    if len(cleaned) > 200:
        raise UnsafeText(f"meeting_needs.{field}: one line of at most 200 characters")
    return cleaned


def needs_lines(needs: MeetingNeeds | None, interpreter_language: str | None, language: str) -> list[str]:
    """Each of the person's needs as one line, in the text's language (empty: nothing to prepare).

    ``interpreter_language`` is the older field a command may carry without ``needs``; the needs' own
    language wins when both are given.
    """
    sv = language == "sv"
    lines: list[str] = []
    tolk = interpreter_line((needs.interpreter_language if needs else None) or interpreter_language, language)
    if tolk:
        lines.append(tolk)
    if needs is None:
        return lines
    if needs.picture_support:
        lines.append(
            "Bildstöd behövs under mötet" if sv else "Picture support (bildstöd) needed at the meeting"
        )
    if needs.longest_duration_minutes:
        minutes = needs.longest_duration_minutes
        lines.append(f"Mötet får vara högst {minutes} minuter" if sv
                     else f"The meeting may last at most {minutes} minutes")  # fmt: skip
    if not needs.attends_whole_meeting:
        lines.append("Personen deltar bara i en del av mötet" if sv
                     else "The person takes part in only part of the meeting")  # fmt: skip
    if needs.someone_stays_after:
        lines.append("Någon stannar kvar efter mötet och går igenom det som beslutats" if sv
                     else "Someone stays after the meeting to go through what was decided")  # fmt: skip
    texts = (
        ("avoid", "Undvik", "Avoid"),
        ("place", "Önskad plats", "Preferred place"),
        ("time_of_day", "Önskad tid på dagen", "Preferred time of day"),
        ("room", "Rummet", "The room"),
    )
    for field, label_sv, label_en in texts:
        value = _need_text(getattr(needs, field), field)
        if value:
            lines.append(f"{label_sv if sv else label_en}: {value}")
    return lines


def needs_block(needs: MeetingNeeds | None, interpreter_language: str | None, language: str) -> str | None:
    """The "Inför mötet" / "Before the meeting" block of an e-mail or calendar description, or None."""
    lines = needs_lines(needs, interpreter_language, language)
    if not lines:
        return None
    return "\n".join([_NEEDS_HEADING[language], *(f"- {line}" for line in lines)])


def needs_sms(needs: MeetingNeeds | None, interpreter_language: str | None, language: str) -> str:
    """The needs in an SMS: the interpreter line as before, the rest in a few words ('' when none)."""
    sv = language == "sv"
    tolk = interpreter_line((needs.interpreter_language if needs else None) or interpreter_language, language)
    short: list[str] = []
    if needs is not None:
        if needs.picture_support:
            short.append("bildstöd" if sv else "picture support")
        if needs.longest_duration_minutes:
            short.append(f"högst {needs.longest_duration_minutes} min" if sv
                         else f"at most {needs.longest_duration_minutes} min")  # fmt: skip
        if not needs.attends_whole_meeting:
            short.append("deltar en del av mötet" if sv else "attends part of it")
        if needs.someone_stays_after:
            short.append("någon stannar efteråt" if sv else "someone stays afterwards")
        if any(getattr(needs, f) for f in ("avoid", "place", "time_of_day", "room")):
            short.append("fler önskemål i e-posten" if sv else "more wishes in the e-mail")
    out = f" {tolk}." if tolk else ""
    if short:
        out += f" {'Inför mötet' if sv else 'Before the meeting'}: {', '.join(short)}."
    return out


# ---- times ----------------------------------------------------------------------------------
def local_due(due_at: datetime) -> datetime:
    if due_at.tzinfo is None:
        raise ValueError("due time must carry a time zone")
    return due_at.astimezone(STOCKHOLM)


def _format_sv(dt: datetime) -> str:
    return f"{dt.day} {_SV_MONTHS[dt.month - 1]} {dt.year} kl. {dt:%H:%M} ({dt:%Z})"


def _format_en(dt: datetime) -> str:
    # month names spelled out here: strftime's %B follows the process locale
    return f"{dt.day} {_EN_MONTHS[dt.month - 1]} {dt.year}, {dt:%H:%M} Swedish time ({dt:%Z})"


def _format(dt: datetime, language: str) -> str:
    local = local_due(dt)
    return _format_sv(local) if language == "sv" else _format_en(local)


def _short(dt: datetime, language: str) -> str:
    d = local_due(dt)
    if language == "sv":
        return f"{d.day} {_SV_MONTHS[d.month - 1][:3]} kl. {d:%H:%M}"
    return f"{d.day} {_EN_MONTHS[d.month - 1][:3]} {d:%H:%M}"


def format_meeting_time(meeting: Meeting, language: str) -> str:
    start = local_due(meeting.start)
    end = local_due(meeting.end) if meeting.end is not None else None
    if language == "sv":
        text = f"{_SV_WEEKDAYS[start.weekday()]} {start.day} {_SV_MONTHS[start.month - 1]} {start.year} "
        text += f"kl. {start:%H:%M}"
        if end is not None:
            text += f"–{end:%H:%M}" if end.date() == start.date() else f" – {_format_sv(end)}"
        return f"{text} ({start:%Z})"
    text = f"{_EN_WEEKDAYS[start.weekday()]} {start.day} {_EN_MONTHS[start.month - 1]} {start.year}, "
    text += f"{start:%H:%M}"
    if end is not None:
        text += f"–{end:%H:%M}" if end.date() == start.date() else f" – {_format_en(end)}"
    return f"{text} Swedish time ({start:%Z})"


# ---- shared pieces --------------------------------------------------------------------------
_FOOTER = {
    "sv": (
        "Av hänsyn till den enskildes integritet innehåller meddelandet inga namn, "
        "personnummer eller uppgifter om hälsa. Ange ärendereferensen när ni hör av er.\n\n"
        "Meddelandet är skickat automatiskt av sip-suite och går inte att svara på.\n"
    ),
    "en": (
        "For the person's privacy this message contains no name, personal identity number or "
        "health information. Refer to the case reference when you get in touch.\n\n"
        "This message was sent automatically by sip-suite; replies are not read.\n"
    ),
}
_READ_HERE = {
    "sv": "Läs ärendet och planen här (inloggning krävs, endast behöriga deltagare):",
    "en": "Read the case and the plan here (sign-in required, authorised participants only):",
}


def _language(language: str) -> str:
    if language not in ("sv", "en"):
        raise ValueError(f"unsupported language: {language!r}")
    return language


def _meeting_lines(meeting: Meeting, language: str) -> list[str]:
    place = _place(meeting.location)
    video = _url(meeting.video_url, "meeting_video_url") if meeting.video_url else None
    sv = language == "sv"
    lines = [f"{'Tid' if sv else 'Time'}: {format_meeting_time(meeting, language)}"]
    if place:
        lines.append(f"{'Plats' if sv else 'Place'}: {place}")
    if video:
        lines.append(f"{'Videolänk' if sv else 'Video link'}: {video}")
    return lines


def _sms_meeting(meeting: Meeting, language: str) -> str:
    where = _place(meeting.location) or ""
    if meeting.video_url:
        where = f"{where}, video {meeting.video_url}" if where else f"video {meeting.video_url}"
    when = _short(meeting.start, language)
    return f"{when}, {where}" if where else when


def _finish(subject: str, body: str, sms: str) -> RenderedEmail:
    check_text(subject, body, sms)
    return RenderedEmail(subject=subject, body=body, sms=sms)


def _lines(*parts: str | None) -> str:
    return "\n".join(p for p in parts if p is not None)


# ---- the kinds ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sender:
    """Who asks: the owning unit that calls the meeting, and its functional contact when the directory
    names one (a function such as "SIP-samordnare, …", never a person)."""

    unit: str
    contact: str | None = None
    phone: str | None = None
    email: str | None = None


def _who(sender: Sender, language: str) -> str:
    """The contact (else the unit) with its phone and e-mail as far as they are known: never a
    placeholder for what is missing."""
    sv = language == "sv"
    who = sender.contact or sender.unit
    if sender.phone and sender.email:
        return who + (
            f", telefon {sender.phone} eller e-post {sender.email}"
            if sv
            else f", phone {sender.phone} or e-mail {sender.email}"
        )
    if sender.phone:
        return who + (f", telefon {sender.phone}" if sv else f", phone {sender.phone}")
    if sender.email:
        return who + (f", e-post {sender.email}" if sv else f", e-mail {sender.email}")
    return who


def _contact_line(sender: Sender | None, ref: str, language: str) -> str | None:
    """Whom to ask and how (None without a sender)."""
    if sender is None:
        return None
    if language == "sv":
        return f"Frågor om kallelsen? Kontakta {_who(sender, language)}. Ange ärendereferensen {ref}."
    return (
        f"Questions about this invitation? Contact {_who(sender, language)}. Give the case reference {ref}."
    )


def _contact_sms(sender: Sender | None, language: str) -> str:
    if sender is None or not (sender.phone or sender.email):
        return ""
    return f" {'Frågor' if language == 'sv' else 'Questions'}: {sender.phone or sender.email}."


def render_invitation(
    *,
    case_reference: str,
    plan_url: str,
    language: str = "sv",
    meeting: Meeting | None = None,
    interpreter_language: str | None = None,
    meeting_needs: MeetingNeeds | None = None,
    sender: Sender | None = None,
    replaces_earlier: bool = False,
) -> RenderedEmail:
    """The invitation (kallelse), read as its recipient reads it: who asks and how to reach them
    (``sender``: the owning unit and its functional contact), what the reader is asked to do and by
    when (come to the meeting at its time, answer the calendar invitation before it). Without a
    meeting time the text says the time will follow. The person's needs, when recorded, follow as the
    "Inför mötet" block.

    ``replaces_earlier``: the recipient was invited before in this case (the rule is
    :func:`services.notify.domain.replaces_earlier_invitation`); subject and text say this invitation
    replaces the earlier one. The deadline for *sending* the invitation is the coordinator's and is
    never shown here."""
    lang = _language(language)
    ref = _reference(case_reference)
    url = _url(plan_url, "plan_url")
    block = needs_block(meeting_needs, interpreter_language, lang)
    needs = f"{block}\n\n" if block else ""
    sms_needs = needs_sms(meeting_needs, interpreter_language, lang)
    contact = _contact_line(sender, ref, lang)
    contact_text = f"{contact}\n\n" if contact else ""
    sms_contact = _contact_sms(sender, lang)
    if lang == "sv":
        subject = f"{'Ändrad kallelse' if replaces_earlier else 'Kallelse'} till SIP-planering – {ref}"
        who = f"{sender.unit} kallar er verksamhet" if sender else "Er verksamhet kallas"
        intro = (
            f"{who} till ett möte om en samordnad individuell plan (SIP) för en person "
            "som behöver stöd från flera verksamheter.\n\n"
        )
        if replaces_earlier:
            intro = (
                f"Kallelsen är ändrad. Den ersätter kallelsen ni fick tidigare i ärende {ref}: "
                "det är tiden och platsen nedan som gäller.\n\n" + intro
            )
        if meeting is not None:
            when = _lines(*_meeting_lines(meeting, lang))
            ask = (
                "Det här ombeds ni göra:\n"
                f"- Kom till SIP-mötet {format_meeting_time(meeting, lang)}, med någon som kan "
                "företräda er verksamhet.\n"
                "- Svara i den bifogade kalenderinbjudan om ni kommer, innan mötet börjar.\n\n"
            )
            calendar = "En kalenderinbjudan är bifogad. Svara i kalendern om ni kommer.\n\n"
            if replaces_earlier:
                calendar = (
                    "En kalenderinbjudan är bifogad. Den uppdaterar mötet i er kalender i stället "
                    "för att lägga till ett nytt. Svara i kalendern om ni kommer.\n\n"
                )
            sms_when = f"Möte {_sms_meeting(meeting, lang)}."
        else:
            when = "Tid: inte bestämd ännu. Ni får en ny kallelse när tiden är bestämd."
            ask = (
                "Det här ombeds ni göra:\n"
                "- Ingenting ännu: planera för att delta. Ni får en ny kallelse med tid och plats.\n\n"
            )
            calendar = "Ingen kalenderinbjudan är bifogad eftersom mötestiden inte är bestämd.\n\n"
            sms_when = "Mötestid ej bestämd."
        body = (
            "Hej,\n\n"
            f"{intro}"
            f"Ärende: {ref}\n"
            f"{when}\n\n"
            f"{ask}"
            f"{needs}"
            f"{calendar}"
            f"{contact_text}"
            f"{_READ_HERE[lang]}\n{url}\n\n" + _FOOTER[lang]
        )
        first = (
            "Ändrad kallelse till SIP (ersätter den tidigare)" if replaces_earlier else "Kallelse till SIP"
        )
        sms = f"{first}, ärende {ref}. {sms_when}{sms_needs}{sms_contact} Läs: {url}"
    else:
        subject = f"{'Updated invitation' if replaces_earlier else 'Invitation'} to SIP planning – {ref}"
        who = f"{sender.unit} invites your organisation" if sender else "Your organisation is invited"
        intro = (
            f"{who} to a meeting about a coordinated individual plan "
            "(samordnad individuell plan, SIP) for a person who needs support from several "
            "organisations.\n\n"
        )
        if replaces_earlier:
            intro = (
                f"This invitation has changed. It replaces the invitation you received earlier for case "
                f"{ref}: the time and place below are the ones that apply.\n\n" + intro
            )
        if meeting is not None:
            when = _lines(*_meeting_lines(meeting, lang))
            ask = (
                "What you are asked to do:\n"
                f"- Come to the SIP meeting on {format_meeting_time(meeting, lang)}, with someone who "
                "can speak for your organisation.\n"
                "- Reply to the attached calendar invitation whether you will come, before the "
                "meeting starts.\n\n"
            )
            calendar = "A calendar invitation is attached. Please reply in your calendar.\n\n"
            if replaces_earlier:
                calendar = (
                    "A calendar invitation is attached. It updates the meeting in your calendar "
                    "instead of adding a new one. Please reply in your calendar.\n\n"
                )
            sms_when = f"Meeting {_sms_meeting(meeting, lang)}."
        else:
            when = "Time: not set yet. You will get a new invitation once the time is set."
            ask = (
                "What you are asked to do:\n"
                "- Nothing yet: plan to take part. You will get a new invitation with the time and "
                "place.\n\n"
            )
            calendar = "No calendar invitation is attached because the meeting time is not set yet.\n\n"
            sms_when = "Meeting time not set yet."
        body = (
            "Hello,\n\n"
            f"{intro}"
            f"Case reference: {ref}\n"
            f"{when}\n\n"
            f"{ask}"
            f"{needs}"
            f"{calendar}"
            f"{contact_text}"
            f"{_READ_HERE[lang]}\n{url}\n\n" + _FOOTER[lang]
        )
        first = (
            "Updated invitation to SIP (replaces the earlier one)"
            if replaces_earlier
            else "Invitation to SIP"
        )
        sms = f"{first}, case {ref}. {sms_when}{sms_needs}{sms_contact} Read: {url}"
    return _finish(subject, body, sms)


def render_reminder(
    *,
    case_reference: str,
    meeting: Meeting,
    plan_url: str,
    language: str = "sv",
    interpreter_language: str | None = None,
    meeting_needs: MeetingNeeds | None = None,
    sender: Sender | None = None,
) -> RenderedEmail:
    """A reminder before the meeting, with the person's needs ("Inför mötet"); whom to tell when the
    reader cannot come (``sender``: the owning unit and its contact)."""
    lang = _language(language)
    ref = _reference(case_reference)
    url = _url(plan_url, "plan_url")
    block = needs_block(meeting_needs, interpreter_language, lang)
    sms_needs = needs_sms(meeting_needs, interpreter_language, lang)
    details = _lines(*_meeting_lines(meeting, lang)) + (f"\n\n{block}" if block else "")
    if lang == "sv":
        subject = f"Påminnelse: SIP-möte {_short(meeting.start, lang)} – {ref}"
        body = (
            "Hej,\n\n"
            "Det här är en påminnelse om SIP-mötet som er verksamhet är kallad till.\n\n"
            f"Ärende: {ref}\n{details}\n\n"
            f"Kan ni inte komma? Hör av er till {_who(sender, lang) if sender else 'den som kallade'}, "
            "så snart som möjligt.\n\n"
            f"{_READ_HERE[lang]}\n{url}\n\n" + _FOOTER[lang]
        )
        sms = f"Påminnelse: SIP-möte {_sms_meeting(meeting, lang)}, ärende {ref}.{sms_needs}"
    else:
        subject = f"Reminder: SIP meeting {_short(meeting.start, lang)} – {ref}"
        body = (
            "Hello,\n\n"
            "This is a reminder of the SIP meeting your organisation is invited to.\n\n"
            f"Case reference: {ref}\n{details}\n\n"
            f"Cannot come? Tell {_who(sender, lang) if sender else 'the organiser'} as soon as possible.\n\n"
            f"{_READ_HERE[lang]}\n{url}\n\n" + _FOOTER[lang]
        )
        sms = f"Reminder: SIP meeting {_sms_meeting(meeting, lang)}, case {ref}.{sms_needs}"
    return _finish(subject, body, sms)


def render_plan_established(
    *,
    case_reference: str,
    plan_url: str,
    language: str = "sv",
    interpreter_language: str | None = None,
    meeting_needs: MeetingNeeds | None = None,
) -> RenderedEmail:
    """The plan is agreed: where to read it. Nothing of its content; the person's needs for the
    meetings to come ("Inför mötet") when recorded."""
    lang = _language(language)
    ref = _reference(case_reference)
    url = _url(plan_url, "plan_url")
    block = needs_block(meeting_needs, interpreter_language, lang)
    needs = f"{block}\n\n" if block else ""
    sms_needs = needs_sms(meeting_needs, interpreter_language, lang)
    if lang == "sv":
        subject = f"SIP-planen är fastställd – {ref}"
        body = (
            "Hej,\n\n"
            f"Den samordnade individuella planen (SIP) i ärende {ref} är nu fastställd. "
            "Er verksamhet är en av deltagarna.\n\n"
            f"{needs}"
            "Läs planen här, och se vad er verksamhet ska göra och när "
            "(inloggning krävs, endast behöriga deltagare):\n"
            f"{url}\n\n" + _FOOTER[lang]
        )
        sms = f"SIP-planen i ärende {ref} är fastställd.{sms_needs} Läs: {url}"
    else:
        subject = f"The SIP plan is agreed – {ref}"
        body = (
            "Hello,\n\n"
            f"The coordinated individual plan (SIP) in case {ref} is now agreed. "
            "Your organisation is one of the participants.\n\n"
            f"{needs}"
            "Read the plan here and see what your organisation is to do and when "
            "(sign-in required, authorised participants only):\n"
            f"{url}\n\n" + _FOOTER[lang]
        )
        sms = f"The SIP plan in case {ref} is agreed.{sms_needs} Read: {url}"
    return _finish(subject, body, sms)


def render_follow_up_due(
    *,
    case_reference: str,
    follow_up_due_at: datetime,
    plan_url: str,
    language: str = "sv",
    interpreter_language: str | None = None,
    meeting_needs: MeetingNeeds | None = None,
) -> RenderedEmail:
    """The plan's follow-up (uppföljning) is due; the person's needs for the follow-up meeting."""
    lang = _language(language)
    ref = _reference(case_reference)
    url = _url(plan_url, "plan_url")
    block = needs_block(meeting_needs, interpreter_language, lang)
    needs = f"\n{block}\n" if block else ""
    sms_needs = needs_sms(meeting_needs, interpreter_language, lang)
    if lang == "sv":
        subject = f"Dags att följa upp SIP – {ref}"
        body = (
            "Hej,\n\n"
            f"Planen i ärende {ref} ska följas upp senast {_format(follow_up_due_at, lang)}.\n"
            "Boka ett uppföljningsmöte tillsammans med personen och de andra deltagarna.\n"
            + needs
            + f"\n{_READ_HERE[lang]}\n{url}\n\n"
            + _FOOTER[lang]
        )
        sms = f"SIP {ref} ska följas upp senast {_short(follow_up_due_at, lang)}.{sms_needs}" + f" Läs: {url}"
    else:
        subject = f"Time to follow up the SIP – {ref}"
        body = (
            "Hello,\n\n"
            f"The plan in case {ref} is to be followed up by {_format(follow_up_due_at, lang)}.\n"
            "Book a follow-up meeting with the person and the other participants.\n"
            + needs
            + f"\n{_READ_HERE[lang]}\n{url}\n\n"
            + _FOOTER[lang]
        )
        sms = (
            f"SIP {ref} is to be followed up by {_short(follow_up_due_at, lang)}.{sms_needs}"
            + f" Read: {url}"
        )
    return _finish(subject, body, sms)


_DEADLINE_SV = {
    "admission-notice": "skicka inskrivningsmeddelandet",
    "invitation": "skicka kallelsen till SIP-planering",
    "meeting": "hålla SIP-mötet",
    "follow-up": "följa upp planen",
    "consent-expiry": "förnya samtycket innan det upphör",
    "other": "ta nästa steg",
}
_DEADLINE_EN = {
    "admission-notice": "send the admission notice",
    "invitation": "send the invitation to SIP planning",
    "meeting": "hold the SIP meeting",
    "follow-up": "follow up the plan",
    "consent-expiry": "renew the consent before it ends",
    "other": "take the next step",
}
DEADLINES: tuple[str, ...] = tuple(_DEADLINE_SV)


def deadline_of(kind: str) -> Deadline:
    """A deadline kind as published by planning (an open set) → one the texts know (else ``other``)."""
    return cast(Deadline, kind) if kind in _DEADLINE_SV else "other"


def render_deadline_escalation(
    *, case_reference: str, deadline: Deadline, due_at: datetime, plan_url: str, language: str = "sv"
) -> RenderedEmail:
    """To the owning unit: a deadline has passed and the case needs someone to act."""
    lang = _language(language)
    ref = _reference(case_reference)
    url = _url(plan_url, "plan_url")
    if deadline not in _DEADLINE_SV:
        raise ValueError(f"unknown deadline: {deadline!r}")
    if lang == "sv":
        subject = f"Tidsfristen har passerat – {ref}"
        body = (
            "Hej,\n\n"
            f"Tidsfristen för att {_DEADLINE_SV[deadline]} i ärende {ref} gick ut "
            f"{_format(due_at, lang)}.\n"
            "Er verksamhet har ansvaret för ärendet. Se till att någon tar hand om det i dag.\n\n"
            f"{_READ_HERE[lang]}\n{url}\n\n" + _FOOTER[lang]
        )
        sms = f"Tidsfristen i SIP {ref} har passerat ({_short(due_at, lang)}). Åtgärda i dag: {url}"
    else:
        subject = f"The deadline has passed – {ref}"
        body = (
            "Hello,\n\n"
            f"The deadline to {_DEADLINE_EN[deadline]} in case {ref} passed on "
            f"{_format(due_at, lang)}.\n"
            "Your organisation is responsible for the case. Make sure someone deals with it today.\n\n"
            f"{_READ_HERE[lang]}\n{url}\n\n" + _FOOTER[lang]
        )
        sms = f"The deadline in SIP {ref} has passed ({_short(due_at, lang)}). Act today: {url}"
    return _finish(subject, body, sms)


def _cancelled_meeting(meeting: Meeting | None, language: str) -> tuple[str, str]:
    """The paragraph (and the SMS words) saying that the meeting the recipient was invited to is not
    held and that the attached cancellation removes it from their calendar ('' without one)."""
    if meeting is None:
        return "", ""
    when = format_meeting_time(meeting, language)
    if language == "sv":
        return (
            f"SIP-mötet {when} är inställt. En avbokning är bifogad, så att mötet tas bort ur er "
            "kalender.\n\n",
            f" Mötet {_short(meeting.start, language)} är inställt.",
        )
    return (
        f"The SIP meeting on {when} is cancelled. A cancellation is attached so that the meeting is "
        "removed from your calendar.\n\n",
        f" The meeting {_short(meeting.start, language)} is cancelled.",
    )


def render_consent_withdrawn(
    *,
    case_reference: str,
    withdrawn_at: datetime,
    language: str = "sv",
    cause: WithdrawalCause = "withdrawal",
    cancelled_meeting: Meeting | None = None,
) -> RenderedEmail:
    """The person withdrew consent (or it was cancelled as wrongly registered, ``cause``): sharing
    stops now. No link, no health data. ``cancelled_meeting``: the meeting the recipient was invited
    to, which is not held; the mail carries its cancellation (``METHOD:CANCEL``)."""
    lang = _language(language)
    ref = _reference(case_reference)
    cancelled, sms_cancelled = _cancelled_meeting(cancelled_meeting, lang)
    if cause not in ("withdrawal", "cancellation"):
        raise ValueError(f"unknown cause: {cause!r}")
    if lang == "sv":
        if cause == "withdrawal":
            subject = f"SIP pausad: samtycket är återkallat – {ref}"
            what = f"Personen har återkallat sitt samtycke till SIP i ärende {ref}"
        else:
            subject = f"SIP pausad: samtycket gäller inte – {ref}"
            what = (
                f"Samtycket till SIP i ärende {ref} gäller inte: det var felaktigt registrerat "
                "och har makulerats"
            )
        body = (
            "Hej,\n\n"
            f"{what} ({_format(withdrawn_at, lang)}).\n\n"
            "Det betyder från och med nu:\n"
            "- Dela inga uppgifter om personen med de andra deltagarna i ärendet.\n"
            "- Planerade SIP-möten hålls inte förrän det finns ett nytt samtycke.\n"
            "- Personens rätt till vård och stöd påverkas inte.\n\n" + cancelled + _FOOTER[lang]
        )
        state = "återkallat" if cause == "withdrawal" else "makulerat"
        sms = f"SIP {ref} är pausad: samtycket är {state}. Dela inga uppgifter om personen.{sms_cancelled}"
    else:
        if cause == "withdrawal":
            subject = f"SIP paused: consent withdrawn – {ref}"
            what = f"The person has withdrawn their consent to the SIP in case {ref}"
        else:
            subject = f"SIP paused: consent not valid – {ref}"
            what = (
                f"The consent to the SIP in case {ref} is not valid: it was registered in error and cancelled"
            )
        body = (
            "Hello,\n\n"
            f"{what} ({_format(withdrawn_at, lang)}).\n\n"
            "From now on:\n"
            "- Do not share anything about the person with the other participants in the case.\n"
            "- Planned SIP meetings are not held unless there is a new consent.\n"
            "- The person's right to care and support is not affected.\n\n" + cancelled + _FOOTER[lang]
        )
        state = "withdrawn" if cause == "withdrawal" else "cancelled"
        sms = f"SIP {ref} is paused: consent {state}. Do not share anything about the person.{sms_cancelled}"
    return _finish(subject, body, sms)


_CLOSED_SV = {
    "plan-completed": "planens mål är uppnådda eller insatserna avslutade",
    "person-ended": "personen har valt att avsluta sin SIP",
    "consent-withdrawn": "samtycket är återkallat",
    "other": "ärendet är avslutat av den ansvariga verksamheten",
}
_CLOSED_EN = {
    "plan-completed": "the plan's goals are met or its interventions have ended",
    "person-ended": "the person has chosen to end their SIP",
    "consent-withdrawn": "consent has been withdrawn",
    "other": "the responsible organisation has closed the case",
}


def render_case_closed(
    *,
    case_reference: str,
    closed_at: datetime,
    reason: ClosedReason,
    language: str = "sv",
    plan_url: str | None = None,
    cancelled_meeting: Meeting | None = None,
) -> RenderedEmail:
    """The SIP is closed (avslut). The reason is a code from a fixed set, never free text.
    ``cancelled_meeting``: a meeting the recipient was invited to that is now not held; the mail
    carries its cancellation (``METHOD:CANCEL``)."""
    lang = _language(language)
    ref = _reference(case_reference)
    cancelled, sms_cancelled = _cancelled_meeting(cancelled_meeting, lang)
    url = _url(plan_url, "plan_url") if plan_url else None
    if reason not in _CLOSED_SV:
        raise ValueError(f"unknown reason: {reason!r}")
    if lang == "sv":
        subject = f"SIP avslutad – {ref}"
        read = f"{_READ_HERE[lang]}\n{url}\n\n" if url else ""
        body = (
            "Hej,\n\n"
            f"Den samordnade individuella planen i ärende {ref} avslutades {_format(closed_at, lang)}.\n"
            f"Orsak: {_CLOSED_SV[reason]}.\n\n"
            "Er verksamhet behöver inte göra något mer inom denna SIP.\n\n" + cancelled + read + _FOOTER[lang]
        )
        sms = f"SIP {ref} är avslutad.{sms_cancelled}" + (f" Läs: {url}" if url else "")
    else:
        subject = f"SIP closed – {ref}"
        read = f"{_READ_HERE[lang]}\n{url}\n\n" if url else ""
        body = (
            "Hello,\n\n"
            f"The coordinated individual plan in case {ref} was closed on {_format(closed_at, lang)}.\n"
            f"Reason: {_CLOSED_EN[reason]}.\n\n"
            "Your organisation has nothing more to do in this SIP.\n\n" + cancelled + read + _FOOTER[lang]
        )
        sms = f"SIP {ref} is closed.{sms_cancelled}" + (f" Read: {url}" if url else "")
    return _finish(subject, body, sms)


RENDERERS: dict[Kind, Callable[..., RenderedEmail]] = {
    "invitation": render_invitation,
    "reminder": render_reminder,
    "plan-established": render_plan_established,
    "follow-up-due": render_follow_up_due,
    "deadline-escalation": render_deadline_escalation,
    "consent-withdrawn": render_consent_withdrawn,
    "case-closed": render_case_closed,
}


def render(kind: Kind, **fields: Any) -> RenderedEmail:
    """Render any kind by name (``fields`` are the render function's keyword arguments)."""
    try:
        fn = RENDERERS[kind]
    except KeyError:
        raise ValueError(f"unknown notification kind: {kind!r}") from None
    return fn(**fields)
