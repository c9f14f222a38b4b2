"""The person's meeting needs on every notice a participant acts on (issue #22).

With the needs recorded, every notice kind a participant acts on — invitation (with and without a
time), updated invitation, reminder, plan established, follow-up due — and the calendar file state
each need, in Swedish and English, as the "Inför mötet" / "Before the meeting" block; without them
no empty block appears. A webhook gets the same needs as data in its FHIR Communication. The texts
pass the personnummer and health-data guards; a need text that would carry either is refused.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from fhir.resources.R4B.communication import Communication

from services.notify import handlers
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.fhir import NEEDS_EXTENSION
from services.notify.templates import UnsafeText, contains_health_data, contains_personal_number, render
from shared.contracts import MeetingNeeds
from shared.directory import load_directory
from tests.support.personnummer import ADULTS
from tests.unit.notify.conftest import T0
from tests.unit.notify.test_calendar import calendar_part, event
from tests.unit.notify.test_case_notices import case_notice
from tests.unit.notify.test_content import DIAGNOSIS_LEAKS, MEETING, REF, URL, T
from tests.unit.notify.test_subscriber_and_handler import invitation

SOC, VC = "SE2120001-SOC0180", "SE2321000016-VC001"

NEEDS = MeetingNeeds(
    interpreter_language="ar",
    picture_support=True,
    longest_duration_minutes=60,
    someone_stays_after=True,
    avoid="starkt ljus och hög musik",
    place="Hemma i lägenheten",
    time_of_day="förmiddag",
    room="Ett lugnt rum utan fönster mot gatan",
    attends_whole_meeting=False,
)
# each need as the text states it
STATED = {
    "sv": (
        "Inför mötet:",
        "- Tolk: arabiska behövs",
        "- Bildstöd behövs under mötet",
        "- Mötet får vara högst 60 minuter",
        "- Personen deltar bara i en del av mötet",
        "- Någon stannar kvar efter mötet och går igenom det som beslutats",
        "- Undvik: starkt ljus och hög musik",
        "- Önskad plats: Hemma i lägenheten",
        "- Önskad tid på dagen: förmiddag",
        "- Rummet: Ett lugnt rum utan fönster mot gatan",
    ),
    "en": (
        "Before the meeting:",
        "- Interpreter: Arabic needed",
        "- Picture support (bildstöd) needed at the meeting",
        "- The meeting may last at most 60 minutes",
        "- The person takes part in only part of the meeting",
        "- Someone stays after the meeting to go through what was decided",
        "- Avoid: starkt ljus och hög musik",
        "- Preferred place: Hemma i lägenheten",
        "- Preferred time of day: förmiddag",
        "- The room: Ett lugnt rum utan fönster mot gatan",
    ),
}
HEADINGS = ("Inför mötet", "Before the meeting")

# every kind a participant acts on, with its other fields
ACTED_ON: dict[str, tuple[str, dict[str, Any]]] = {
    "invitation": ("invitation", dict(case_reference=REF, plan_url=URL, meeting=MEETING)),
    "invitation-without-time": ("invitation", dict(case_reference=REF, plan_url=URL)),
    "reminder": ("reminder", dict(case_reference=REF, meeting=MEETING, plan_url=URL)),
    "plan-established": ("plan-established", dict(case_reference=REF, plan_url=URL)),
    "follow-up-due": ("follow-up-due", dict(case_reference=REF, follow_up_due_at=T, plan_url=URL)),
}  # fmt: skip


def assert_states_every_need(text: str, language: str) -> None:
    for line in STATED[language]:
        assert line in text, f"{line!r} missing from:\n{text}"
    assert not contains_personal_number(text) and not contains_health_data(text)


def assert_no_block(text: str) -> None:
    for heading in HEADINGS:
        assert heading not in text
    assert "Tolk" not in text and "Interpreter" not in text


@pytest.mark.parametrize("language", ["sv", "en"])
@pytest.mark.parametrize("case", list(ACTED_ON))
def test_every_notice_a_participant_acts_on_states_each_need(case, language):
    kind, fields = ACTED_ON[case]
    r = render(kind, language=language, meeting_needs=NEEDS, **fields)  # type: ignore[arg-type]
    assert_states_every_need(r.body, language)
    # the SMS: the interpreter as before, the rest in a few words, within three segments
    assert ("Tolk: arabiska behövs" if language == "sv" else "Interpreter: Arabic needed") in r.sms
    assert ("bildstöd" if language == "sv" else "picture support") in r.sms
    assert len(r.sms) <= 480


@pytest.mark.parametrize("language", ["sv", "en"])
@pytest.mark.parametrize("case", list(ACTED_ON))
def test_without_needs_there_is_no_empty_block(case, language):
    kind, fields = ACTED_ON[case]
    for needs in (None, MeetingNeeds()):
        r = render(kind, language=language, meeting_needs=needs, **fields)  # type: ignore[arg-type]
        assert_no_block(r.body)
        assert_no_block(r.sms)
        assert "\n\n\n" not in r.body


def test_only_some_needs_only_those_lines():
    r = render("plan-established", case_reference=REF, plan_url=URL,
               meeting_needs=MeetingNeeds(picture_support=True))  # fmt: skip
    assert "Inför mötet:\n- Bildstöd behövs under mötet\n\n" in r.body
    assert "Tolk" not in r.body and "Undvik" not in r.body and "minuter" not in r.body


def test_a_command_from_before_with_only_the_interpreter_language_gets_the_block():
    r = render("plan-established", case_reference=REF, plan_url=URL, interpreter_language="so")
    assert "Inför mötet:\n- Tolk: somaliska behövs" in r.body


@pytest.mark.parametrize("field", ["avoid", "place", "time_of_day", "room"])
def test_a_personnummer_or_a_diagnosis_in_a_need_text_is_refused(field):
    for leak in (f"{ADULTS[0][:8]}-{ADULTS[0][8:]}", *DIAGNOSIS_LEAKS):
        needs = MeetingNeeds(**{field: f"Rum 3, {leak}"})
        for kind, fields in ACTED_ON.values():
            with pytest.raises(UnsafeText) as refused:
                render(kind, meeting_needs=needs, **fields)  # type: ignore[arg-type]
            assert leak not in str(refused.value)


# ---- through notify: the mails and calendar files as sent, the webhook's Communication -----------
async def _accept(app, settings, clock, cmd) -> None:
    async with app.state.runtime.unit_of_work() as uow:
        await handlers.accept_invitation(
            cmd, directory=load_directory(settings.directory_path), repo=SqlNotificationRepository(uow.conn),
            clock=clock,
        )  # fmt: skip


async def _notice(app, settings, clock, notice) -> None:
    async with app.state.runtime.unit_of_work() as uow:
        await handlers.handle_case_notice(
            notice, directory=load_directory(settings.directory_path), repo=SqlNotificationRepository(uow.conn),
            clock=clock,
        )  # fmt: skip


def _mail_to_soc(sender, subject_start: str):
    found = [
        m
        for m in sender.sent
        if m.to[0].startswith("sip-socialtjanst") and m.subject.startswith(subject_start)
    ]
    assert found, f"no mail {subject_start!r}: {[m.subject for m in sender.sent]}"
    return found[-1]


SUBJECTS = {
    "sv": ("Kallelse till SIP-planering", "Påminnelse: SIP-möte", "SIP-planen är fastställd", "Dags att följa upp"),
    "en": ("Invitation to SIP planning", "Reminder: SIP meeting", "The SIP plan is agreed", "Time to follow up"),
}  # fmt: skip


@pytest.mark.parametrize("language", ["sv", "en"])
@pytest.mark.parametrize("with_needs", [True, False], ids=["needs", "no-needs"])
async def test_every_mail_and_calendar_file_as_sent(
    app, settings, clock, sender, webhook, language, with_needs
):
    needs = NEEDS if with_needs else None
    meeting = T0 + timedelta(days=3)
    first = invitation(SOC, VC, language=language, meeting_needs=needs)  # no time yet
    moved = first.model_copy(update={
        "message_id": uuid4(), "occurred_at": first.occurred_at + timedelta(minutes=1), "meeting_start": meeting,
        "meeting_location": "Vårdcentralen Södermalm, rum 3",
    })  # fmt: skip
    d = app.state.dispatcher
    await _accept(app, settings, clock, first)
    await d.dispatch_once()
    await _accept(app, settings, clock, moved)  # the updated invitation, with the calendar file
    await d.dispatch_once()
    clock.advance(meeting - T0 - timedelta(hours=23))  # past the reminder's due time
    await d.dispatch_once()
    for kind in ("plan-established", "follow-up-due"):
        await _notice(app, settings, clock, case_notice(kind, SOC, VC, case_id=first.case_id,
                                                        consent_id=first.consent_id, meeting_needs=needs))  # fmt: skip
    await d.dispatch_once()

    invite, reminder, established, follow_up = (_mail_to_soc(sender, s) for s in SUBJECTS[language])
    updated = [m for m in sender.sent if m.to[0].startswith("sip-socialtjanst") and m.calendar]
    assert len(updated) == 1
    _, cal = calendar_part(updated[0])
    description = str(event(cal)["DESCRIPTION"])
    mails = [invite, updated[0], reminder, established, follow_up]
    for text in [m.body for m in mails] + [description]:
        if with_needs:
            assert_states_every_need(text, language)
        else:
            assert_no_block(text)

    # the webhook (the primary-care unit) gets the needs as data in its FHIR Communication
    assert len(webhook.delivered) == 5  # invitation, updated invitation, reminder, the two notices
    for delivery in webhook.delivered:
        resource = delivery.communication
        Communication.model_validate(resource)
        found = [e for e in resource["extension"] if e["url"] == NEEDS_EXTENSION]
        if not with_needs:
            assert found == []
            continue
        [ext] = found
        parts = {p["url"]: p for p in ext["extension"]}
        assert parts["interpreter-language"]["valueCoding"] == {"system": "urn:ietf:bcp:47", "code": "ar"}
        assert parts["picture-support"]["valueBoolean"] is True
        assert parts["someone-stays-after"]["valueBoolean"] is True
        assert parts["attends-whole-meeting"]["valueBoolean"] is False
        assert parts["longest-duration"]["valueDuration"] == {
            "value": 60, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"
        }  # fmt: skip
        assert parts["avoid"]["valueString"] == "starkt ljus och hög musik"
        assert parts["place"]["valueString"] == "Hemma i lägenheten"
        assert parts["time-of-day"]["valueString"] == "förmiddag"
        assert parts["room"]["valueString"] == "Ett lugnt rum utan fönster mot gatan"


async def test_a_closing_notice_states_no_needs(app, settings, clock, sender):
    notice = case_notice("case-closed", SOC, reason_code="followed-up", meeting_needs=NEEDS)
    await _notice(app, settings, clock, notice)
    await app.state.dispatcher.dispatch_once()
    [mail] = sender.sent
    assert_no_block(mail.body)
