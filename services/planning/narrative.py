"""The CarePlan's human-readable narrative (``CarePlan.text``), in Swedish.

What a FHIR viewer in a kommun or region shows for the plan: its status, the person, the needs
today, the person's goals, each intervention (*insats*) with the goal it serves, who is responsible
and until when, what others do, the organisation with overall responsibility (*huvudansvar*), how the
interventions are coordinated, the invitation and the meeting (time, place, video link, participants,
the person's needs for the meeting such as an interpreter) and the follow-up. Only what the resource
itself holds (status ``generated``); the same text for the R4 and the R5 rendering.

Pure: no I/O, no logging (the narrative holds personal data: it is part of the resource and goes
where the resource goes, never into a log). The XHTML is built with :mod:`shared.narrative`, which
escapes every text, so the result keeps to FHIR's narrative rules whatever the plan's texts contain.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from services.planning.domain import SipCase
from services.planning.plan import Intervention, MeetingPreferences, PlanContent
from shared.identifiers import parse_person_identifier
from shared.narrative import Markup, day, el, link_or_text, local_time, narrative

#: CarePlan.status as a Swedish reader knows it
STATUS_TEXT = {
    "draft": "Under planering (utkast)",
    "active": "Gällande",
    "on-hold": "Vilande",
    "revoked": "Avbruten",
    "completed": "Avslutad och uppföljd",
    "entered-in-error": "Felregistrerad",
    "unknown": "Okänd",
}
#: a few interpreter languages by name (BCP 47 → Swedish); others show their code
LANGUAGES = {
    "ar": "arabiska",
    "en": "engelska",
    "fa": "persiska",
    "fi": "finska",
    "prs": "dari",
    "ps": "pashto",
    "ku": "kurdiska",
    "pl": "polska",
    "ru": "ryska",
    "so": "somaliska",
    "sv": "svenska",
    "ti": "tigrinja",
    "tr": "turkiska",
    "uk": "ukrainska",
    "bs": "bosniska",
    "hr": "kroatiska",
    "sr": "serbiska",
    "es": "spanska",
    "swl": "svenskt teckenspråk",
}


def care_plan_text(
    case: SipCase,
    *,
    status: str,
    content: PlanContent | None,
    names: dict[str, str],
    role_text: dict[str, str],
    invitation_sent: bool,
    follow_up: date | None,
    follow_up_done: bool,
) -> dict[str, str]:
    """``CarePlan.text`` for one version of the case (``status`` is the CarePlan.status rendered)."""
    pid = parse_person_identifier(case.patient_identifier)
    parts: list[Markup] = [
        el("p", el("b", f"Samordnad individuell plan {case.reference}")),
        el(
            "p",
            "Status: ",
            el("b", STATUS_TEXT.get(status, status)),
            el("br"),
            f"Person: {_person(pid.value)}",
            el("br"),
            f"Påbörjad: {day(case.opened_at)}",
        ),
    ]
    if content is None:
        parts.append(
            el(
                "p",
                "Insatser, mål och huvudansvar beslutas på SIP-mötet tillsammans med personen.",
            )
        )
    else:
        parts += _content(content, names, follow_up or content.follow_up_date, follow_up_done)
    parts += _participants(case, role_text)
    if case.invitation_due_at is not None:
        state = "skickad" if invitation_sent else "ännu inte skickad"
        parts.append(
            el(
                "p",
                el("b", "Kallelse till SIP-planering: "),
                f"{state}; senast {local_time(case.invitation_due_at)} (LUS 2017:612).",
            )
        )
    if case.meeting is not None:
        parts += _meeting(case)
    if case.preferences is not None:
        parts += _preferences(case.preferences)
    if case.closed_reason and status in ("revoked", "completed", "entered-in-error"):
        parts.append(el("p", el("b", "Avslutad: "), case.closed_reason))
    return narrative(parts)


def _person(value: str) -> str:
    digits = value.replace("-", "").replace("+", "")
    return f"{digits[:8]}-{digits[8:]}" if len(digits) == 12 and digits.isdigit() else value


def _org(hsa_id: str, names: dict[str, str]) -> str:
    name = names.get(hsa_id)
    return f"{name} ({hsa_id})" if name else hsa_id


def _responsible(i: Intervention, names: dict[str, str]) -> str:
    r = i.responsible
    if r.kind == "organisation" and r.hsa_id:
        return f"{r.name} ({r.hsa_id})" if r.name else _org(r.hsa_id, names)
    if r.kind == "person":
        return "Personen själv (egenvård)"
    return r.name or "Närstående"


def _content(
    content: PlanContent, names: dict[str, str], follow_up: date, follow_up_done: bool
) -> list[Markup]:
    goals = {g.id: g for g in content.goals}
    out = [
        el("p", el("b", "Huvudansvar: "), _org(content.overall_responsibility_hsa_id, names)),
        el("h3", "Behov i dag"),
        el("ul", (el("li", need) for need in content.needs)),
        el("h3", "Personens mål"),
        el(
            "ul",
            (
                el("li", g.description, f" (senast {g.due_date.isoformat()})" if g.due_date else None)
                for g in content.goals
            ),
        ),
        el("h3", "Insatser"),
    ]
    if content.interventions:
        rows = [el("tr", el("th", "Insats"), el("th", "Mål"), el("th", "Ansvarig"), el("th", "Till och med"))]
        for i in content.interventions:
            served = "; ".join(goals[g].description for g in i.goal_ids if g in goals)
            rows.append(
                el(
                    "tr",
                    el("td", i.description),
                    el("td", served or "–"),
                    el("td", _responsible(i, names)),
                    el("td", i.end_date.isoformat() if i.end_date else "tills vidare"),
                )
            )
        out.append(el("table", rows, class_="grid"))
    else:
        out.append(el("p", "Inga insatser är beslutade ännu."))
    if content.others:
        out += [el("h3", "Andra aktörer"), el("ul", (el("li", x) for x in content.others))]
    out += [
        el("h3", "Samordning"),
        el("p", content.coordination),
        el(
            "p",
            el("b", "Uppföljning: "),
            f"{follow_up.isoformat()}{' (genomförd)' if follow_up_done else ''}, "
            f"ansvarig {_org(content.overall_responsibility_hsa_id, names)}.",
        ),
    ]
    return out


def _participants(case: SipCase, role_text: dict[str, str]) -> list[Markup]:
    if not case.participants:
        return []
    return [
        el("h3", "Deltagare"),
        el(
            "ul",
            el("li", "Personen"),
            (el("li", f"{p.name} ({p.hsa_id}) – {role_text.get(p.kind, p.kind)}") for p in case.participants),
        ),
    ]


def _meeting(case: SipCase) -> list[Markup]:
    m = case.meeting
    assert m is not None
    same_day = day(m.start) == day(m.end)
    end = local_time(m.end)[-5:] if same_day else local_time(m.end)
    lines: list[Any] = [f"Tid: {local_time(m.start)}–{end}"]
    if m.location:
        lines += [el("br"), f"Plats: {m.location}"]
    if m.video_url:
        lines += [el("br"), "Video: ", link_or_text(m.video_url)]
    return [el("h3", "SIP-möte"), el("p", lines)]


def _preferences(p: MeetingPreferences) -> list[Markup]:
    items: list[str] = []
    if p.interpreter_language:
        lang = LANGUAGES.get(p.interpreter_language.split("-")[0].lower())
        items.append(
            f"Tolk: {lang} ({p.interpreter_language})" if lang else f"Tolk: {p.interpreter_language}"
        )
    if p.picture_support:
        items.append("Bildstöd")
    if p.place:
        items.append(f"Önskad plats: {p.place}")
    if p.time_of_day:
        items.append(f"Önskad tid på dagen: {p.time_of_day}")
    if p.longest_duration_minutes:
        items.append(f"Mötet får vara högst {p.longest_duration_minutes} minuter")
    if p.room:
        items.append(f"Rummet: {p.room}")
    if p.disturbances:
        items.append(f"Undvik: {p.disturbances}")
    if not p.attend_all:
        items.append("Personen deltar inte i hela mötet")
    if p.someone_stays_after:
        items.append("Någon stannar efteråt och går igenom vad som beslutades")
    if not items:
        items.append("Inga särskilda önskemål")
    return [el("h3", "Inför mötet"), el("ul", (el("li", x) for x in items))]
