"""The calendar invitation (iCalendar, RFC 5545/5546 ``METHOD:REQUEST``) attached to an invitation e-mail.

- one event per SIP case: ``UID`` is derived from the case id, so a resent invitation (a new
  ``SendInvitation`` for the same case, e.g. a new time) *updates* the event in the participants'
  calendars instead of adding a second one; ``SEQUENCE`` grows with the command's time and is always
  above every calendar of the case issued before it (:func:`next_sequence`), so the later command
  wins even within the same minute;
- a meeting that will not be held (the consent was withdrawn, the case closed) is removed from the
  calendars with ``METHOD:CANCEL`` for the same ``UID``, a higher ``SEQUENCE`` and
  ``STATUS:CANCELLED`` (:func:`cancellation_ics`);
- times in Europe/Stockholm (``DTSTART;TZID=Europe/Stockholm`` with its ``VTIMEZONE``);
- ``ORGANIZER`` is the owning unit, ``ATTENDEE`` every invited organisation reachable by e-mail;
- a remote meeting carries its video link as ``URL``, in ``LOCATION`` (when no place is given) and in
  ``DESCRIPTION``;
- ``DESCRIPTION`` states the person's meeting needs as the e-mail does (the "Inför mötet" block).

The texts are the same guarded texts as the e-mail: no name, personnummer or health data.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from uuid import UUID

from icalendar import Calendar, Event, Timezone, vCalAddress, vText

from services.notify.templates import (
    STOCKHOLM,
    Meeting,
    check_text,
    format_meeting_time,
    needs_block,
)
from shared.clock import STOCKHOLM_ZONE_NAME
from shared.contracts import MeetingNeeds

TZID = STOCKHOLM_ZONE_NAME
PRODID = "-//sip-suite//notify//SV"
_SEQUENCE_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CalendarParty:
    """An organisation in the event: its name, HSA-id and e-mail address."""

    name: str
    hsa_id: str
    email: str


def event_uid(case_id: UUID) -> str:
    """The same for every invitation of one case: calendars update the event they already have."""
    return f"sip-case-{case_id}@sip-suite"


def sequence_for(issued_at: datetime) -> int:
    """Minutes since 2024 of the command: a later invitation for the same case supersedes earlier ones."""
    return max(0, int((issued_at - _SEQUENCE_EPOCH).total_seconds() // 60))


def next_sequence(issued_at: datetime, earlier: Iterable[str]) -> int:
    """The ``SEQUENCE`` of a calendar issued at ``issued_at`` for a case whose earlier calendars are
    ``earlier`` (their iCalendar texts): the command's minutes since 2024, and above every calendar of
    the case issued before it. One issued after it (a stale command delivered late) is not overtaken."""
    seq = sequence_for(issued_at)
    for text in earlier:
        ev = calendar_event(text)
        if ev is not None and ev.stamp < issued_at:
            seq = max(seq, ev.sequence + 1)
    return seq


@dataclass(frozen=True)
class CalendarEvent:
    """What notify reads back from a calendar it sent: enough to update or cancel the event."""

    method: str
    uid: str
    sequence: int
    stamp: datetime
    start: datetime | None
    end: datetime | None


def calendar_event(text: str) -> CalendarEvent | None:
    """The event of a calendar notify sent (None when the text holds none)."""
    cal = Calendar.from_ical(text)
    events = cal.walk("VEVENT")
    if not events:
        return None
    ev = events[0]
    start = ev.decoded("DTSTART") if "DTSTART" in ev else None
    end = ev.decoded("DTEND") if "DTEND" in ev else None
    return CalendarEvent(
        method=str(cal.get("METHOD", "REQUEST")).upper(),
        uid=str(ev["UID"]),
        sequence=int(ev.get("SEQUENCE", 0)),
        stamp=ev.decoded("DTSTAMP"),
        start=start if isinstance(start, datetime) else None,
        end=end if isinstance(end, datetime) else None,
    )


def calendar_method(text: str) -> str:
    """The ``METHOD`` of a calendar (REQUEST, CANCEL); the e-mail's ``text/calendar; method=`` says
    the same (RFC 6047)."""
    for line in text.splitlines():
        if line.upper().startswith("METHOD:"):
            return line.split(":", 1)[1].strip().upper()
    return "REQUEST"


def cancellation_ics(previous: str, *, issued_at: datetime, sequence: int, language: str = "sv") -> str:
    """The ``METHOD:CANCEL`` calendar that removes the event ``previous`` (a calendar notify sent) from
    its attendees' calendars: the same ``UID``, ``ORGANIZER``, attendees and time, ``sequence`` (higher
    than any sent before, see :func:`next_sequence`) and ``STATUS:CANCELLED``. No more text than the
    case reference: the summary says the meeting is cancelled."""
    old = Calendar.from_ical(previous)
    [event] = old.walk("VEVENT")
    reference = str(event.get("SUMMARY", "")).rsplit("– ", 1)[-1]
    sv = language == "sv"
    summary = f"Inställt: SIP-möte – {reference}" if sv else f"Cancelled: SIP meeting – {reference}"
    description = (
        "SIP-mötet är inställt och tas bort ur kalendern."
        if sv
        else "The SIP meeting is cancelled and removed from the calendar."
    )
    check_text(summary, description)
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "CANCEL")
    for tz in old.walk("VTIMEZONE"):
        cal.add_component(tz)
    ev = Event()
    ev.add("uid", event["UID"])
    ev.add("sequence", sequence)
    ev.add("dtstamp", issued_at.astimezone(UTC))
    for prop in ("DTSTART", "DTEND"):
        if prop in event:
            ev.add(prop.lower(), event.decoded(prop))
    ev.add("summary", summary)
    ev.add("description", description)
    ev.add("status", "CANCELLED")
    ev.add("transp", "TRANSPARENT")
    ev.add("class", "CONFIDENTIAL")
    if "ORGANIZER" in event:
        ev.add("organizer", event["ORGANIZER"], encode=False)
    attendees = event.get("ATTENDEE", [])
    for attendee in attendees if isinstance(attendees, list) else [attendees]:
        ev.add("attendee", attendee, encode=False)
    cal.add_component(ev)
    return cal.to_ical().decode("utf-8")


def _address(party: CalendarParty, *, role: str | None) -> vCalAddress:
    addr = vCalAddress(f"mailto:{party.email}")
    addr.params["CN"] = vText(party.name)
    if role is not None:
        addr.params["CUTYPE"] = vText("GROUP")
        addr.params["ROLE"] = vText(role)
        addr.params["PARTSTAT"] = vText("NEEDS-ACTION")
        addr.params["RSVP"] = vText("TRUE")
    return addr


def invitation_ics(
    *,
    case_id: UUID,
    case_reference: str,
    meeting: Meeting,
    organizer: CalendarParty,
    attendees: tuple[CalendarParty, ...],
    plan_url: str,
    issued_at: datetime,
    sequence: int | None = None,
    language: str = "sv",
    interpreter_language: str | None = None,
    meeting_needs: MeetingNeeds | None = None,
    default_duration: timedelta = timedelta(hours=1),
) -> str:
    """The VCALENDAR text (CRLF line endings) for a SIP meeting. ``sequence`` defaults to the
    command's own (:func:`sequence_for`); the handler passes :func:`next_sequence`."""
    if meeting.start.tzinfo is None:
        raise ValueError("meeting start must carry a time zone")
    start = meeting.start.astimezone(STOCKHOLM)
    end = meeting.end.astimezone(STOCKHOLM) if meeting.end is not None else start + default_duration
    sv = language == "sv"
    summary = f"SIP-möte – {case_reference}" if sv else f"SIP meeting – {case_reference}"
    lines = [
        ("Samordnad individuell plan (SIP)" if sv else "Coordinated individual plan (SIP)"),
        f"{'Ärende' if sv else 'Case reference'}: {case_reference}",
        f"{'Tid' if sv else 'Time'}: {format_meeting_time(meeting, language)}",
    ]
    if meeting.location:
        lines.append(f"{'Plats' if sv else 'Place'}: {' '.join(meeting.location.split())}")
    if meeting.video_url:
        lines.append(f"{'Videolänk' if sv else 'Video link'}: {meeting.video_url}")
    block = needs_block(meeting_needs, interpreter_language, language)
    if block:
        lines.append(block)
    lines.append(f"{'Läs ärendet och planen' if sv else 'Read the case and the plan'}: {plan_url}")
    description = "\n".join(lines)
    location = " ".join(meeting.location.split()) if meeting.location else None
    if meeting.video_url:
        location = f"{location} / {meeting.video_url}" if location else meeting.video_url
    check_text(summary, description, location or "")

    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "REQUEST")
    cal.add_component(
        Timezone.from_tzid(TZID, first_date=date(start.year - 1, 1, 1), last_date=date(end.year + 2, 1, 1))
    )
    ev = Event()
    ev.add("uid", event_uid(case_id))
    ev.add("sequence", sequence_for(issued_at) if sequence is None else sequence)
    ev.add("dtstamp", issued_at.astimezone(UTC))
    ev.add("dtstart", start)
    ev.add("dtend", end)
    ev.add("summary", summary)
    ev.add("description", description)
    if location:
        ev.add("location", location)
    if meeting.video_url:
        ev.add("url", meeting.video_url)
    ev.add("status", "CONFIRMED")
    ev.add("transp", "OPAQUE")
    ev.add("class", "CONFIDENTIAL")
    ev.add("organizer", _address(organizer, role=None))
    for party in attendees:
        ev.add("attendee", _address(party, role="REQ-PARTICIPANT"), encode=False)
    cal.add_component(ev)
    return cal.to_ical().decode("utf-8")
