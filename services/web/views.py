"""What the pages show, read from the APIs' answers (pure functions: a dict in, plain values out).

A FHIR CarePlan from planning becomes what a person reads: needs, goals, interventions with who is
responsible and until when, who has overall responsibility, the meeting, the person's wishes for it and
the follow-up. Personal identifiers in the resource (the person's personnummer) are never passed on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.clock import STOCKHOLM
from shared.identifiers import PERSONNUMMER_SYSTEM, SAMORDNINGSNUMMER_SYSTEM
from shared.languages import InvalidLanguageCode, interpreter_language_name

# the person's own identifiers: a page names the person, never shows their number
PERSON_SYSTEMS = frozenset({PERSONNUMMER_SYSTEM, SAMORDNINGSNUMMER_SYSTEM})
# planning's CarePlan note of the person's wishes: "Personens önskemål om mötet: tolk: ar; bildstöd"
WISHES_NOTE = "Personens önskemål om mötet: "
INTERPRETER_PART = "tolk: "


@dataclass
class Intervention:
    description: str
    goals: list[str]
    responsible: str
    until: str | None


@dataclass
class Meeting:
    start: datetime
    end: datetime | None
    place: str | None
    video_url: str | None


@dataclass
class PlanView:
    id: str
    reference: str
    status: str
    version: str
    updated: datetime | None
    title: str
    coordination: str | None
    overall_responsible: str | None
    needs: list[str] = field(default_factory=list)
    goals: list[tuple[str, str | None]] = field(default_factory=list)
    interventions: list[Intervention] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    wishes: str | None = None
    participants: list[tuple[str, str]] = field(default_factory=list)
    meeting: Meeting | None = None
    follow_up: str | None = None
    follow_up_by: str | None = None


def parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def local(t: datetime | None) -> str:
    """A time as a Swedish reader reads it: Europe/Stockholm, ``2026-12-07 kl. 16:17``."""
    if t is None:
        return ""
    return t.astimezone(STOCKHOLM).strftime("%Y-%m-%d kl. %H:%M")


def _who(ref: dict[str, Any] | None, self_text: str) -> str:
    if not ref:
        return ""
    ident = ref.get("identifier") or {}
    if ident.get("system") in PERSON_SYSTEMS:  # the person: never their number
        display = ref.get("display")
        return str(display) if display else self_text
    display, value = ref.get("display"), ident.get("value")
    return f"{display} ({value})" if display and value else str(display or value or "")


def wishes_text(note: str, lang: str) -> str:
    """The person's wishes for the meeting as planning's note has them, with the interpreter
    language's code named in the reader's language ("tolk: arabiska", "interpreter: Arabic"); a code
    not listed stays as it is, and so does a part that is not a language code."""
    parts = note.split("; ")
    for i, part in enumerate(parts):
        if not part.startswith(INTERPRETER_PART):
            continue
        code = part.removeprefix(INTERPRETER_PART).strip()
        try:
            name = interpreter_language_name(code, lang)
        except InvalidLanguageCode:
            continue
        parts[i] = f"tolk: {name}" if lang == "sv" else f"interpreter: {name}"
    return "; ".join(parts)


def care_plan(resource: dict[str, Any], *, self_text: str = "Personen själv", lang: str = "sv") -> PlanView:
    contained = {c.get("id"): c for c in resource.get("contained", []) if isinstance(c, dict)}
    ref_id = next(
        (i.get("value") for i in resource.get("identifier", []) if i.get("system", "").endswith("sip-case")),
        "",
    )
    view = PlanView(
        id=str(resource.get("id", "")),
        reference=str(ref_id or ""),
        status=str(resource.get("status", "")),
        version=str((resource.get("meta") or {}).get("versionId", "")),
        updated=parse_time((resource.get("meta") or {}).get("lastUpdated")),
        title=str(resource.get("title", "")),
        coordination=resource.get("description"),
        overall_responsible=_who(resource.get("author") or resource.get("custodian"), self_text) or None,
    )
    goal_text: dict[str, str] = {}
    for c in contained.values():
        kind = c.get("resourceType")
        if kind == "Condition":
            view.needs.append(str((c.get("code") or {}).get("text", "")))
        elif kind == "Goal":
            text = str((c.get("description") or {}).get("text", ""))
            goal_text[f"#{c.get('id')}"] = text
            due = next((t.get("dueDate") for t in c.get("target", []) if t.get("dueDate")), None)
            view.goals.append((text, due))
        elif kind == "CareTeam":
            for p in c.get("participant", []):
                role = ", ".join(r.get("text", "") for r in p.get("role", []))
                member = p.get("member") or {}
                if (member.get("identifier") or {}).get("system") in PERSON_SYSTEMS:
                    continue  # the person is shown as themself, not by number
                view.participants.append((_who(member, self_text), role))
        elif kind == "Appointment":
            start = parse_time(c.get("start"))
            if start is not None:
                place = video = None
                for part in str(c.get("comment") or "").split("; "):
                    if part.startswith("Plats: "):
                        place = part.removeprefix("Plats: ")
                    elif part.startswith("Video: "):
                        url = part.removeprefix("Video: ")
                        video = url if url.startswith("https://") else None
                view.meeting = Meeting(start, parse_time(c.get("end")), place, video)
        elif kind == "Task" and c.get("id") == "follow-up":
            view.follow_up = ((c.get("restriction") or {}).get("period") or {}).get("end")
            view.follow_up_by = _who(c.get("owner"), self_text) or None
    for a in resource.get("activity", []):
        d = a.get("detail")
        if not d:
            continue
        performers = [_who(p, self_text) for p in d.get("performer", [])]
        view.interventions.append(
            Intervention(
                description=str(d.get("description", "")),
                goals=[goal_text.get(g.get("reference", ""), "") for g in d.get("goal", [])],
                responsible=", ".join(p for p in performers if p),
                until=(d.get("scheduledPeriod") or {}).get("end"),
            )
        )
    for n in resource.get("note", []):
        text = str(n.get("text", ""))
        if text.startswith("Andra aktörer: "):
            view.others.append(text.removeprefix("Andra aktörer: "))
        elif text.startswith(WISHES_NOTE):
            view.wishes = wishes_text(text.removeprefix(WISHES_NOTE), lang)
    return view


def _ics_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def calendar(plan: PlanView, *, plan_url: str, now: datetime) -> str | None:
    """The meeting as an iCalendar file (the same UID as the invitation's calendar: one per case), or
    None when no meeting is set. No personal identifier and no health data in it."""
    m = plan.meeting
    if m is None:
        return None
    fmt = "%Y%m%dT%H%M%SZ"
    end = m.end or m.start
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//sip-suite//web//SV",
        "CALSCALE:GREGORIAN",
        "BEGIN:VEVENT",
        f"UID:sip-case-{plan.id}@sip-suite",
        f"DTSTAMP:{now.astimezone(UTC).strftime(fmt)}",
        f"DTSTART:{m.start.astimezone(UTC).strftime(fmt)}",
        f"DTEND:{end.astimezone(UTC).strftime(fmt)}",
        f"SUMMARY:{_ics_text('SIP-möte ' + plan.reference)}",
        f"URL:{plan_url}",
    ]
    if m.place:
        lines.append(f"LOCATION:{_ics_text(m.place)}")
    description = plan_url + (f"\nVideo: {m.video_url}" if m.video_url else "")
    lines += [f"DESCRIPTION:{_ics_text(description)}", "END:VEVENT", "END:VCALENDAR"]
    return "\r\n".join(lines) + "\r\n"
