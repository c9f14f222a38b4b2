"""The calendar invitation attached to the invitation e-mail (icalendar, METHOD:REQUEST)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from icalendar import Calendar

from services.notify import handlers
from services.notify.adapters.smtp import build_message
from services.notify.adapters.store import SqlNotificationRepository
from services.notify.ics import event_uid
from shared.directory import UnknownRecipient, load_directory
from tests.unit.notify.test_subscriber_and_handler import invitation

SOC, VC = "SE2120001-SOC0180", "SE2321000016-VC001"
SOC_MAIL = "mailto:sip-socialtjanst@stockholm.example"
VC_MAIL = "mailto:fast-vardkontakt@vc-sodermalm.example"
# 09:00 UTC in March is 10:00 in Stockholm (CET); 07:30 UTC in July is 09:30 (CEST)
WINTER = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
SUMMER = datetime(2026, 7, 2, 7, 30, tzinfo=UTC)


async def accept(app, settings, clock, cmd):
    async with app.state.runtime.unit_of_work() as uow:
        return await handlers.accept_invitation(
            cmd,
            directory=load_directory(settings.directory_path),
            repo=SqlNotificationRepository(uow.conn),
            clock=clock,
        )


async def sent_mails(app, settings, clock, sender, cmd):
    await accept(app, settings, clock, cmd)
    await app.state.dispatcher.dispatch_once()
    return {m.to[0]: m for m in sender.sent}


def calendar_part(mail) -> tuple[str, Calendar]:
    """Through the real MIME building: the text/calendar part as a mail client sees it."""
    msg = message_from_bytes(bytes(build_message(mail, "sip-suite@localhost")), policy=default_policy)
    [part] = [p for p in msg.walk() if p.get_content_type() == "text/calendar"]
    assert part.get_param("method") == "REQUEST"
    return part.get_content(), Calendar.from_ical(part.get_content())


def event(cal: Calendar):
    [ev] = cal.walk("VEVENT")
    return ev


async def test_invitation_with_a_meeting_time_carries_an_ics_in_stockholm_time(app, settings, clock, sender):
    cmd = invitation(SOC, VC, meeting_start=WINTER, meeting_end=WINTER + timedelta(minutes=90),
                     meeting_location="Vårdcentralen Södermalm, rum 3")  # fmt: skip
    mails = await sent_mails(app, settings, clock, sender, cmd)
    raw, cal = calendar_part(mails["sip-socialtjanst@stockholm.example"])
    assert str(cal["METHOD"]) == "REQUEST"
    assert [str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")] == ["Europe/Stockholm"]
    ev = event(cal)
    assert "DTSTART;TZID=Europe/Stockholm:20260305T100000" in raw.replace("\r\n ", "")
    assert ev["DTSTART"].params["TZID"] == "Europe/Stockholm"
    start, end = ev.decoded("DTSTART"), ev.decoded("DTEND")
    assert (start.hour, start.minute, str(start.tzinfo)) == (10, 0, "Europe/Stockholm")
    assert (end.hour, end.minute) == (11, 30)
    assert start == WINTER
    # organizer = the owning unit (the invited primary-care unit), attendees = the invited organisations
    assert str(ev["ORGANIZER"]) == VC_MAIL
    assert ev["ORGANIZER"].params["CN"] == "Vårdcentralen Södermalm"
    attendees = ev.get("ATTENDEE")
    assert sorted(str(a) for a in attendees) == sorted([SOC_MAIL, VC_MAIL])
    assert {a.params["CN"] for a in attendees} == {
        "Stockholms stad, socialtjänsten",
        "Vårdcentralen Södermalm",
    }
    assert all(a.params["RSVP"] == "TRUE" for a in attendees)
    assert str(ev["UID"]) == event_uid(cmd.case_id)
    assert str(ev["LOCATION"]) == "Vårdcentralen Södermalm, rum 3"
    assert "URL" not in ev  # not remote
    # every recipient gets the same event
    _, other = calendar_part(mails["fast-vardkontakt@vc-sodermalm.example"])
    assert str(event(other)["UID"]) == str(ev["UID"])
    assert "En kalenderinbjudan är bifogad" in mails["sip-socialtjanst@stockholm.example"].body
    assert "torsdag 5 mars 2026 kl. 10:00–11:30 (CET)" in mails["sip-socialtjanst@stockholm.example"].body


async def test_summer_time_is_cest(app, settings, clock, sender):
    mails = await sent_mails(app, settings, clock, sender, invitation(SOC, meeting_start=SUMMER))
    _, cal = calendar_part(mails["sip-socialtjanst@stockholm.example"])
    ev = event(cal)
    start = ev.decoded("DTSTART")
    assert (start.hour, start.minute, start.utcoffset()) == (9, 30, timedelta(hours=2))
    assert ev.decoded("DTEND") - start == timedelta(minutes=settings.meeting_default_minutes)


async def test_a_remote_meeting_carries_its_video_link(app, settings, clock, sender):
    url = "https://video.region.example/m/8f3c2a"
    cmd = invitation(SOC, VC, meeting_start=WINTER, meeting_video_url=url, interpreter_language="ar")
    mails = await sent_mails(app, settings, clock, sender, cmd)
    mail = mails["sip-socialtjanst@stockholm.example"]
    ev = event(calendar_part(mail)[1])
    assert str(ev["URL"]) == url
    assert url in str(ev["LOCATION"])
    assert url in str(ev["DESCRIPTION"])
    assert "Tolk: arabiska behövs" in str(ev["DESCRIPTION"])
    assert f"Videolänk: {url}" in mail.body
    assert "Tolk: arabiska behövs" in mail.body


async def test_a_resent_invitation_updates_the_same_event(app, settings, clock, sender):
    first = invitation(SOC, meeting_start=WINTER)
    later = invitation(SOC, meeting_start=WINTER + timedelta(days=1)).model_copy(
        update={"case_id": first.case_id, "occurred_at": first.occurred_at + timedelta(hours=2)}
    )
    await sent_mails(app, settings, clock, sender, first)
    await sent_mails(app, settings, clock, sender, later)
    assert len(sender.sent) == 2  # a new command is a new notification …
    ev1, ev2 = (event(calendar_part(m)[1]) for m in sender.sent)
    assert str(ev1["UID"]) == str(ev2["UID"]) == event_uid(first.case_id)  # … of the same event
    assert int(ev2["SEQUENCE"]) > int(ev1["SEQUENCE"])
    assert ev2.decoded("DTSTART") - ev1.decoded("DTSTART") == timedelta(days=1)


async def test_without_a_meeting_time_no_ics_is_sent_and_the_mail_says_so(app, settings, clock, sender):
    mails = await sent_mails(app, settings, clock, sender, invitation(SOC, meeting_location="Rum 3"))
    mail = mails["sip-socialtjanst@stockholm.example"]
    assert mail.calendar is None
    assert "Ingen kalenderinbjudan är bifogad eftersom mötestiden inte är bestämd" in mail.body
    msg = build_message(mail, "sip-suite@localhost")
    assert not msg.is_multipart() and msg.get_content_type() == "text/plain"
    en = await sent_mails(app, settings, clock, sender, invitation(SOC, language="en"))
    assert "No calendar invitation is attached" in en["sip-socialtjanst@stockholm.example"].body


async def test_a_named_organizer_is_used(app, settings, clock, sender):
    mails = await sent_mails(app, settings, clock, sender,
                             invitation(SOC, VC, meeting_start=WINTER, organizer_hsa_id=SOC))  # fmt: skip
    ev = event(calendar_part(mails["fast-vardkontakt@vc-sodermalm.example"])[1])
    assert str(ev["ORGANIZER"]) == SOC_MAIL


async def test_an_unknown_organizer_or_an_end_before_the_start_refuses_the_command(app, settings, clock):
    with pytest.raises(UnknownRecipient):
        await accept(app, settings, clock, invitation(SOC, meeting_start=WINTER, organizer_hsa_id="SE9-NOPE"))
    with pytest.raises(handlers.InvitationRefused, match="meeting_end"):
        await accept(app, settings, clock, invitation(SOC, meeting_start=WINTER, meeting_end=WINTER))
    with pytest.raises(handlers.InvitationRefused, match="meeting_end"):
        await accept(app, settings, clock, invitation(SOC, meeting_end=WINTER))
