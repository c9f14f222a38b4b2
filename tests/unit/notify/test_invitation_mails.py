"""The invitation mails read as a kommun recipient reads them (issue 20).

A social-services unit in a kommun gets an invitation from the primary-care unit that owns the case.
It must see who asks and how to reach them (the owning unit's functional contact from the directory),
what it is asked to do and by when (come to the meeting, answer before it), never the coordinator's
own deadline for *sending* the invitation. When the meeting moves it gets an *updated* invitation
that says it replaces the first, and the calendar event is updated, not doubled. When the meeting
will not be held (consent withdrawn, case closed) the event is cancelled in its calendar.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from uuid import uuid4

import pytest
from faststream.rabbit import TestRabbitBroker
from icalendar import Calendar
from pydantic import ValidationError

from services.notify import handlers
from services.notify.adapters.smtp import build_message
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.domain import Notification
from services.notify.ics import event_uid
from services.notify.ports import OutgoingEmail
from services.notify.settings import NotifySettings
from services.notify.templates import Meeting, Sender, render_invitation
from shared.contracts import CaseNotice, ConsentWithdrawn, SendInvitation
from shared.directory import Directory, load_directory
from shared.topology import contract_exchange
from tests.support.personnummer import ADULT
from tests.unit.notify.test_subscriber_and_handler import invitation

SOC = "SE2120001-SOC0180"  # the kommun's social services: no contact in this directory
VC = "SE2321000016-VC001"  # the primary-care unit that owns the case: a functional contact
SOC_MAIL = "sip-socialtjanst@stockholm.example"
VC_MAIL = "fast-vardkontakt@vc-sodermalm.example"
REF = "SIP-2026-4F3A9C"

DIRECTORY = """
organisations:
  - hsa_id: SE2120001-SOC0180
    name: Stockholms stad, socialtjänsten
    kind: kommun_social_services
    serves: {kommun_codes: ["0180"]}
    channels:
      - {type: email, address: sip-socialtjanst@stockholm.example}
  - hsa_id: SE2321000016-VC001
    name: Vårdcentralen Södermalm
    kind: primary_care_unit
    contact:
      name: SIP-samordnare, Vårdcentralen Södermalm
      phone: "08-465 004 30"
      email: sip-samordnare@vc-sodermalm.example
    channels:
      - {type: email, address: fast-vardkontakt@vc-sodermalm.example}
"""

# the clock stands at 2 March 2026 09:00 (Stockholm); the meeting is on 5 March, 10:00–11:30 (CET);
# the coordinator's deadline for sending the invitation (invitation_due_at in the command) is
# 5 March 13:00 (CET): it must never reach the reader
MEETING = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
ISSUED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: Path) -> NotifySettings:
    directory = tmp_path / "directory.yaml"
    directory.write_text(DIRECTORY, encoding="utf-8")
    return NotifySettings(data_dir=str(tmp_path), directory_path=str(directory))


def invite(*recipients: str, **kw) -> SendInvitation:
    fields = dict(
        meeting_start=MEETING, meeting_end=MEETING + timedelta(minutes=90), organizer_hsa_id=VC,
        occurred_at=ISSUED,
    )  # fmt: skip
    fields.update(kw)
    return invitation(*recipients, **fields)


def moved(first: SendInvitation, *, by: timedelta, issued_later: timedelta, **kw) -> SendInvitation:
    """The same case re-sent by planning with the meeting moved: a new command."""
    return first.model_copy(
        update={
            "message_id": uuid4(),
            "meeting_start": first.meeting_start + by,  # type: ignore[operator]
            "meeting_end": first.meeting_end + by,  # type: ignore[operator]
            "occurred_at": first.occurred_at + issued_later,
            **kw,
        }
    )


async def accept(app, settings, clock, cmd: SendInvitation) -> list[Notification]:
    async with app.state.runtime.unit_of_work() as uow:
        return await handlers.accept_invitation(
            cmd, directory=load_directory(settings.directory_path), repo=SqlNotificationRepository(uow.conn),
            clock=clock,
        )  # fmt: skip


async def sent(app, sender) -> dict[str, OutgoingEmail]:
    """Everything due goes out; the mails of this round by their first address."""
    sender.sent.clear()
    while await app.state.dispatcher.dispatch_once():
        pass
    return {m.to[0]: m for m in sender.sent}


def calendar_of(mail: OutgoingEmail, method: str) -> Calendar:
    """The text/calendar part as a mail client sees it; its MIME method must match the calendar's."""
    msg = message_from_bytes(bytes(build_message(mail, "sip-suite@localhost")), policy=default_policy)
    [part] = [p for p in msg.walk() if p.get_content_type() == "text/calendar"]
    assert part.get_param("method") == method
    cal = Calendar.from_ical(part.get_content())
    assert str(cal["METHOD"]) == method
    return cal


def event(cal: Calendar):
    [ev] = cal.walk("VEVENT")
    return ev


# ---- who asks, and how to reach them ---------------------------------------------------------------
async def test_the_invitation_says_who_asks_and_how_to_reach_their_contact(app, settings, clock, sender):
    await accept(app, settings, clock, invite(SOC, VC))
    mail = (await sent(app, sender))[SOC_MAIL]
    assert "Vårdcentralen Södermalm kallar er verksamhet till ett möte om en samordnad individuell plan" in (
        mail.body
    )
    assert (
        "Frågor om kallelsen? Kontakta SIP-samordnare, Vårdcentralen Södermalm, telefon 08-465 004 30 "
        "eller e-post sip-samordnare@vc-sodermalm.example. Ange ärendereferensen SIP-2026-4F3A9C."
    ) in mail.body
    assert "None" not in mail.body


def test_without_a_contact_in_the_directory_the_mail_names_the_unit_and_nothing_empty():
    mail = render_invitation(
        case_reference=REF, plan_url="https://sip.example/p", meeting=Meeting(start=MEETING),
        sender=Sender(unit="Stockholms stad, socialtjänsten"),
    )  # fmt: skip
    assert "Frågor om kallelsen? Kontakta Stockholms stad, socialtjänsten. Ange ärendereferensen" in mail.body
    for empty in ("None", "telefon", "e-post ", "Frågor:"):
        assert empty not in mail.body + mail.sms
    only_phone = render_invitation(
        case_reference=REF, plan_url="https://sip.example/p", meeting=Meeting(start=MEETING), language="en",
        sender=Sender(unit="Vårdcentralen Solna", contact="SIP coordinator, Vårdcentralen Solna", phone="08-465 004 40"),
    )  # fmt: skip
    assert "Contact SIP coordinator, Vårdcentralen Solna, phone 08-465 004 40. Give the case reference" in (
        only_phone.body
    )
    assert "e-mail None" not in only_phone.body and "None" not in only_phone.sms
    assert "Questions: 08-465 004 40." in only_phone.sms


async def test_an_owning_unit_without_a_contact_is_named_gracefully(app, settings, clock, sender):
    await accept(app, settings, clock, invite(SOC, VC, organizer_hsa_id=SOC))
    mail = (await sent(app, sender))[VC_MAIL]
    assert "Stockholms stad, socialtjänsten kallar er verksamhet" in mail.body
    assert "Kontakta Stockholms stad, socialtjänsten. Ange ärendereferensen SIP-2026-4F3A9C." in mail.body
    assert "None" not in mail.body


async def test_the_reminder_says_whom_to_tell_when_the_reader_cannot_come(app, settings, clock, sender):
    await accept(app, settings, clock, invite(SOC))
    await sent(app, sender)
    clock.advance(MEETING - timedelta(hours=23) - clock.now())  # the reminder is due 24 h before
    reminder = (await sent(app, sender))[SOC_MAIL]
    assert reminder.subject.startswith("Påminnelse: SIP-möte")
    assert (
        "Kan ni inte komma? Hör av er till SIP-samordnare, Vårdcentralen Södermalm, telefon 08-465 004 30 "
        "eller e-post sip-samordnare@vc-sodermalm.example, så snart som möjligt."
    ) in reminder.body


# ---- what the reader is asked to do, and by when --------------------------------------------------
async def test_the_reader_is_asked_to_come_and_to_answer_before_the_meeting(app, settings, clock, sender):
    await accept(app, settings, clock, invite(SOC))
    mail = (await sent(app, sender))[SOC_MAIL]
    assert (
        "Det här ombeds ni göra:\n"
        "- Kom till SIP-mötet torsdag 5 mars 2026 kl. 10:00–11:30 (CET), med någon som kan företräda "
        "er verksamhet.\n"
        "- Svara i den bifogade kalenderinbjudan om ni kommer, innan mötet börjar."
    ) in mail.body
    en = render_invitation(case_reference=REF, plan_url="https://sip.example/p", language="en",
                           meeting=Meeting(start=MEETING))  # fmt: skip
    assert "What you are asked to do:\n- Come to the SIP meeting on Thursday 5 March 2026, 10:00" in en.body


async def test_the_deadline_for_sending_the_invitation_is_never_shown(app, settings, clock, sender):
    cmd = invite(SOC, VC)
    assert cmd.invitation_due_at == datetime(2026, 3, 5, 12, 0, tzinfo=UTC)  # 13:00 in Stockholm
    await accept(app, settings, clock, cmd)
    await accept(app, settings, clock, invite(SOC, meeting_start=None, meeting_end=None, language="en"))
    await sent(app, sender)
    mails = list(sender.sent)
    assert sorted(m.language for m in mails) == ["en", "sv", "sv"]
    for mail in mails:
        assert "Tidsfrist" not in mail.body and "Deadline" not in mail.body
        assert "13:00" not in mail.body and "13:00" not in (mail.calendar.ics if mail.calendar else "")


# ---- an updated invitation replaces the earlier one ------------------------------------------------
async def test_a_moved_meeting_is_an_updated_invitation_that_updates_the_same_event(
    app, settings, clock, sender
):
    first = invite(SOC)
    await accept(app, settings, clock, first)
    before = (await sent(app, sender))[SOC_MAIL]
    assert before.subject == "Kallelse till SIP-planering – SIP-2026-4F3A9C"
    assert "ersätter" not in before.body

    clock.advance(timedelta(hours=2))
    # re-sent within the same minute as the first: SEQUENCE must still grow
    await accept(app, settings, clock, moved(first, by=timedelta(days=1), issued_later=timedelta(seconds=20)))
    after = (await sent(app, sender))[SOC_MAIL]
    assert after.subject == "Ändrad kallelse till SIP-planering – SIP-2026-4F3A9C"
    assert (
        "Kallelsen är ändrad. Den ersätter kallelsen ni fick tidigare i ärende SIP-2026-4F3A9C" in after.body
    )
    assert "fredag 6 mars 2026 kl. 10:00–11:30 (CET)" in after.body
    assert "uppdaterar mötet i er kalender i stället för att lägga till ett nytt" in after.body
    assert after.body.index("ersätter") < after.body.index("Ärende:")  # said first, not buried

    ev1, ev2 = event(calendar_of(before, "REQUEST")), event(calendar_of(after, "REQUEST"))
    assert str(ev1["UID"]) == str(ev2["UID"]) == event_uid(first.case_id)
    assert int(ev2["SEQUENCE"]) > int(ev1["SEQUENCE"])
    assert ev2.decoded("DTSTART") - ev1.decoded("DTSTART") == timedelta(days=1)


async def test_an_organisation_new_to_the_case_gets_an_ordinary_invitation(app, settings, clock, sender):
    first = invite(SOC)
    await accept(app, settings, clock, first)
    await sent(app, sender)
    await accept(app, settings, clock, moved(first, by=timedelta(hours=2), issued_later=timedelta(hours=1),
                                             recipients=(SOC, VC)))  # fmt: skip
    mails = await sent(app, sender)
    assert mails[SOC_MAIL].subject.startswith("Ändrad kallelse till SIP-planering")
    assert mails[VC_MAIL].subject.startswith("Kallelse till SIP-planering")
    assert "ersätter" not in mails[VC_MAIL].body


async def test_an_invitation_that_never_went_out_is_not_replaced(app, settings, clock, sender):
    """The first was cancelled before it was sent (consent withdrawn): a later one under a new
    consent is the reader's first invitation."""
    first = invite(SOC)
    await accept(app, settings, clock, first)
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(first))
    again = moved(first, by=timedelta(days=1), issued_later=timedelta(hours=1), consent_id=uuid4())
    await accept(app, settings, clock, again)
    await sent(app, sender)
    mails = list(sender.sent)
    assert any(m.subject == "Kallelse till SIP-planering – SIP-2026-4F3A9C" for m in mails)
    assert not any(m.subject.startswith("Ändrad kallelse") for m in mails)


def test_an_updated_invitation_in_english():
    mail = render_invitation(
        case_reference=REF, plan_url="https://sip.example/p", language="en", meeting=Meeting(start=MEETING),
        replaces_earlier=True,
    )  # fmt: skip
    assert mail.subject == "Updated invitation to SIP planning – SIP-2026-4F3A9C"
    assert "It replaces the invitation you received earlier for case SIP-2026-4F3A9C" in mail.body
    assert mail.sms.startswith("Updated invitation to SIP (replaces the earlier one), case SIP-2026-4F3A9C.")


# ---- a meeting that will not be held is cancelled in the calendar ---------------------------------
def withdrawal(cmd: SendInvitation) -> ConsentWithdrawn:
    return ConsentWithdrawn(
        consent_id=cmd.consent_id, case_id=cmd.case_id, patient_identifier=ADULT, cause="withdrawal",
        effective_at=datetime(2026, 3, 2, 7, 30, tzinfo=UTC), correlation_id="corr-w",
    )  # fmt: skip


async def publish(br, msg) -> None:
    await br.publish(
        msg.model_dump(mode="json"), exchange=contract_exchange(type(msg)), routing_key=msg.routing_key
    )


async def test_a_withdrawn_consent_cancels_the_meeting_in_the_readers_calendar(app, settings, clock, sender):
    first = invite(SOC)
    await accept(app, settings, clock, first)
    invited = event(calendar_of((await sent(app, sender))[SOC_MAIL], "REQUEST"))
    clock.advance(timedelta(hours=1))
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(first))
    notice = (await sent(app, sender))[SOC_MAIL]
    assert notice.subject.startswith("SIP pausad: samtycket är återkallat")
    assert (
        "SIP-mötet torsdag 5 mars 2026 kl. 10:00–11:30 (CET) är inställt. En avbokning är bifogad"
    ) in notice.body
    cancel = calendar_of(notice, "CANCEL")
    ev = event(cancel)
    assert str(ev["UID"]) == str(invited["UID"]) == event_uid(first.case_id)
    assert int(ev["SEQUENCE"]) > int(invited["SEQUENCE"])
    assert str(ev["STATUS"]) == "CANCELLED"
    assert ev.decoded("DTSTART") == invited.decoded("DTSTART")
    assert str(ev["ORGANIZER"]) == str(invited["ORGANIZER"])
    assert str(ev["ATTENDEE"]) == str(invited["ATTENDEE"]) == f"mailto:{SOC_MAIL}"
    raw = notice.calendar.ics if notice.calendar else ""
    assert ADULT not in raw + notice.body and ADULT.replace("-", "") not in raw + notice.body


async def test_no_cancellation_for_an_invitation_that_was_never_sent_or_a_meeting_already_held(
    app, settings, clock, sender
):
    unsent = invite(SOC)
    await accept(app, settings, clock, unsent)  # withdrawn before the dispatcher sent it
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, withdrawal(unsent))
        notice = (await sent(app, sender))[SOC_MAIL]
        assert notice.subject.startswith("SIP pausad") and notice.calendar is None
        assert "inställt" not in notice.body

        held = invite(SOC)
        await accept(app, settings, clock, held)
        await sent(app, sender)
        clock.advance(MEETING - clock.now() + timedelta(hours=3))  # the meeting has been held
        await publish(br, withdrawal(held))
    notice = (await sent(app, sender))[SOC_MAIL]
    assert notice.subject.startswith("SIP pausad") and notice.calendar is None


def closed(cmd: SendInvitation) -> CaseNotice:
    return CaseNotice(
        case_id=cmd.case_id, case_reference=cmd.case_reference, kind="case-closed", recipients=(SOC,),
        owner_hsa_id=VC, consent_id=cmd.consent_id, reason_code="refused", correlation_id="corr-c",
    )  # fmt: skip


async def test_a_closed_case_cancels_a_meeting_still_to_come_once(app, settings, clock, sender):
    first = invite(SOC)
    await accept(app, settings, clock, first)
    invited = event(calendar_of((await sent(app, sender))[SOC_MAIL], "REQUEST"))
    async with TestRabbitBroker(app.state.runtime.broker) as br:
        await publish(br, closed(first))
        notice = (await sent(app, sender))[SOC_MAIL]
        assert notice.subject == "SIP avslutad – SIP-2026-4F3A9C"
        assert "är inställt. En avbokning är bifogad" in notice.body
        ev = event(calendar_of(notice, "CANCEL"))
        assert str(ev["UID"]) == str(invited["UID"]) and str(ev["STATUS"]) == "CANCELLED"
        assert int(ev["SEQUENCE"]) > int(invited["SEQUENCE"])
        # a later withdrawal does not cancel the same meeting a second time
        await publish(br, withdrawal(first))
    again = (await sent(app, sender))[SOC_MAIL]
    assert again.subject.startswith("SIP pausad") and again.calendar is None


# ---- the directory's contact -------------------------------------------------------------------
def test_a_contact_in_the_directory_is_optional_and_validated():
    base = {"hsa_id": VC, "name": "Vårdcentralen Södermalm", "kind": "primary_care_unit"}
    assert Directory.model_validate({"organisations": [base]}).organisations[0].contact is None
    good = {**base, "contact": {"name": "SIP-samordnare", "email": "sip@vc-sodermalm.example"}}
    assert Directory.model_validate({"organisations": [good]}).organisations[0].contact.phone is None  # type: ignore[union-attr]
    for bad in ({"name": "SIP-samordnare", "email": "inte en adress"}, {"name": "", "phone": "08-465 004 30"},
                {"name": "SIP-samordnare", "phone": "ring oss"}, {"name": "x", "fax": "08"}):  # fmt: skip
        with pytest.raises(ValidationError):
            Directory.model_validate({"organisations": [{**base, "contact": bad}]})


def test_the_shipped_directory_names_a_contact_for_the_kommuner_and_primary_care():
    directory = load_directory(Path(__file__).parents[3] / "config" / "directory.yaml")
    for org in directory.organisations:
        if org.kind in ("kommun_social_services", "primary_care_unit"):
            assert org.contact is not None and org.contact.email and org.contact.phone, org.hsa_id
            assert org.contact.email.rsplit("@", 1)[1].endswith(".example")
