"""Content rules for every notification kind × language: no personnummer, no health data.

Every kind is rendered in Swedish and English with ordinary input, and then with a personnummer or a
diagnosis fed into each field that could carry one into the text: the text must be refused (the
command goes to the DLQ with the rule), never sent with it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from services.notify import handlers
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.templates import (
    KINDS,
    Meeting,
    UnsafeText,
    contains_health_data,
    contains_personal_number,
    render,
)
from shared.directory import load_directory
from tests.support.personnummer import ADULTS, CHILD, SAMORDNINGSNUMMER
from tests.unit.notify.test_subscriber_and_handler import invitation, rows

REF = "SIP-2026-4F3A9C"
URL = "https://sip.example/fhir/CarePlan/7d9f2c1e-0b4a-4c1e-9a53-6a1f1c0e5a11"
T = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
MEETING = Meeting(
    start=T, location="Vårdcentralen Södermalm, rum 3", video_url="https://video.example/m/8f3c"
)

SAFE: dict[str, dict[str, Any]] = {
    "invitation": dict(case_reference=REF, plan_url=URL, meeting=MEETING,
                       interpreter_language="ar"),
    "reminder": dict(case_reference=REF, meeting=MEETING, plan_url=URL, interpreter_language="so"),
    "plan-established": dict(case_reference=REF, plan_url=URL),
    "follow-up-due": dict(case_reference=REF, follow_up_due_at=T, plan_url=URL, interpreter_language="ti"),
    "deadline-escalation": dict(case_reference=REF, deadline="invitation", due_at=T, plan_url=URL),
    "consent-withdrawn": dict(case_reference=REF, withdrawn_at=T),
    "case-closed": dict(case_reference=REF, closed_at=T, reason="plan-completed", plan_url=URL),
}  # fmt: skip

# every field of every kind through which text from the outside reaches the message
LEAKY: dict[str, tuple[str, ...]] = {
    "invitation": (
        "case_reference",
        "plan_url",
        "meeting.location",
        "meeting.video_url",
        "interpreter_language",
    ),
    "reminder": (
        "case_reference",
        "plan_url",
        "meeting.location",
        "meeting.video_url",
        "interpreter_language",
    ),
    "plan-established": ("case_reference", "plan_url"),
    "follow-up-due": ("case_reference", "plan_url", "interpreter_language"),
    "deadline-escalation": ("case_reference", "plan_url"),
    "consent-withdrawn": ("case_reference",),
    "case-closed": ("case_reference", "plan_url"),
}

TEST_NUMBERS = (*ADULTS[:3], "191212121212", CHILD, SAMORDNINGSNUMMER)


def spellings(pnr: str) -> list[str]:
    """The ways a personnummer is written: 12 digits, with a dash, 10 digits, 10 with a dash."""
    return [pnr, f"{pnr[:8]}-{pnr[8:]}", pnr[2:], f"{pnr[2:8]}-{pnr[8:]}"]


PERSONNUMMER_LEAKS = [s for p in TEST_NUMBERS for s in spellings(p)]
DIAGNOSIS_LEAKS = [
    "F32.1",
    "F32.1 Medelsvår depressiv episod",
    "E11",
    "Diabetes mellitus typ 2",
    "schizofreni",
    "Alzheimers sjukdom",
    "paranoid schizophrenia",
    "HIV",
    "alkoholism",
]
# digits and words that must never be in any text, whatever the input
_ANY_PNR = re.compile(r"(?<!\d)(?:\d{2})?\d{6}[-+]?\d{4}(?!\d)")


def texts(kind: str, language: str, **fields: Any) -> list[str]:
    r = render(kind, language=language, **fields)  # type: ignore[arg-type]
    return [r.subject, r.body, r.sms]


def with_leak(fields: dict[str, Any], field: str, leak: str) -> dict[str, Any]:
    out = dict(fields)
    if field == "case_reference":
        out[field] = f"SIP-{leak}"
    elif field == "plan_url":
        out[field] = f"https://sip.example/patient/{leak}"
    elif field == "meeting.location":
        out["meeting"] = replace(out["meeting"], location=f"Rum 3, {leak}")
    elif field == "meeting.video_url":
        out["meeting"] = replace(out["meeting"], video_url=f"https://video.example/{leak}")
    elif field == "interpreter_language":
        out[field] = leak
    else:  # pragma: no cover
        raise AssertionError(field)
    return out


def test_every_kind_has_a_renderer_and_a_case_here():
    assert set(KINDS) == set(SAFE) == set(LEAKY)


@pytest.mark.parametrize("language", ["sv", "en"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_in_both_languages_without_personal_or_health_data(kind, language):
    subject, body, sms = texts(kind, language, **SAFE[kind])
    assert REF in subject and REF in body and REF in sms
    for text in (subject, body, sms):
        assert not _ANY_PNR.search(text.replace(URL, "")), text
        assert not contains_personal_number(text) and not contains_health_data(text)
        for leak in PERSONNUMMER_LEAKS:
            assert leak not in text
    assert len(sms) <= 480  # three SMS segments at most
    other = texts(kind, "en" if language == "sv" else "sv", **SAFE[kind])
    assert other[0] != subject and other[1] != body  # really translated


@pytest.mark.parametrize("language", ["sv", "en"])
@pytest.mark.parametrize(
    "kind, field", [(kind, field) for kind in KINDS for field in LEAKY[kind]], ids=lambda v: str(v)
)
def test_a_personnummer_or_a_diagnosis_in_any_field_is_refused_not_sent(kind, field, language):
    for leak in (*PERSONNUMMER_LEAKS, *DIAGNOSIS_LEAKS):
        with pytest.raises(UnsafeText) as refused:
            texts(kind, language, **with_leak(SAFE[kind], field, leak))
        # the reason (DLQ header, logs) names the rule, never the value
        assert leak not in str(refused.value)


@pytest.mark.parametrize(
    "kind, language, line",
    [("invitation", "sv", "Tolk: arabiska behövs"), ("invitation", "en", "Interpreter: Arabic needed"),
     ("reminder", "sv", "Tolk: somaliska behövs"), ("reminder", "en", "Interpreter: Somali needed"),
     ("follow-up-due", "sv", "Tolk: tigrinja behövs"), ("follow-up-due", "en", "Interpreter: Tigrinya needed")],
)  # fmt: skip
def test_the_interpreter_need_is_shown(kind, language, line):
    _, body, sms = texts(kind, language, **SAFE[kind])
    assert line in body and line in sms


def test_an_unlisted_language_code_is_shown_as_its_code():
    _, body, _ = texts("invitation", "sv", **{**SAFE["invitation"], "interpreter_language": "wo"})
    assert "Tolk: wo behövs" in body


def test_no_interpreter_no_line():
    _, body, sms = texts("invitation", "sv", **{**SAFE["invitation"], "interpreter_language": None})
    assert "Tolk" not in body and "Tolk" not in sms


def test_consent_withdrawn_has_no_link_and_says_sharing_stops():
    for language, stop in (("sv", "Dela inga uppgifter"), ("en", "Do not share anything")):
        _, body, sms = texts("consent-withdrawn", language, **SAFE["consent-withdrawn"])
        assert "http" not in body and "http" not in sms
        assert stop in body and stop in sms


async def test_a_diagnosis_in_the_meeting_place_refuses_the_command_and_stores_nothing(app, settings, clock):
    cmd = invitation("SE2120001-SOC0180", meeting_start=T, meeting_location="Psykosmottagningen, F20.0")
    with pytest.raises(handlers.InvitationRefused, match="health data"):
        async with app.state.runtime.unit_of_work() as uow:
            await handlers.accept_invitation(
                cmd,
                directory=load_directory(settings.directory_path),
                repo=SqlNotificationRepository(uow.conn),
                clock=clock,
            )
    assert await rows(app.state.runtime) == []


def test_the_contract_refuses_free_text_as_an_interpreter_language():
    with pytest.raises(ValueError):
        invitation("SE2120001-SOC0180", interpreter_language="arabiska, patienten har demens")
