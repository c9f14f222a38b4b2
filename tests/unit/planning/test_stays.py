"""What each hospital event does to a stay and its SIP case (pure rules, services/planning/stays.py)."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.planning.stays import Stay, apply
from shared.hospital import EVENT_KINDS, HospitalEvent
from tests.support.examples import examples
from tests.support.personnummer import ADULT

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
PNR = "http://electronichealth.se/identifier/personnummer"


def ev(kind, minutes=0, msg=None, cancels=None, cancels_msg=None, **kw) -> HospitalEvent:
    kw.setdefault("kommun_code", "0180")
    return HospitalEvent(
        source="hl7v2", source_message_id=msg or f"{kind}-{minutes}", source_event_code="ADT",
        kind=kind, occurred_at=T0 + timedelta(minutes=minutes), stay_id="V1", hospital_id="SJH",
        patient={"system": PNR, "value": ADULT}, cancels=cancels,
        cancels_message_id=cancels_msg, **kw,
    )  # fmt: skip


def run(*events: HospitalEvent, case_opened: bool = True) -> tuple[Stay, list[str]]:
    """Fold events; when an event opens a case, the stay gets one (as the handler does)."""
    stay = Stay.first(events[0])
    effects = []
    for e in events:
        stay, effect = apply(stay, e)
        effects.append(effect)
        if effect == "open-case" and case_opened:
            stay = Stay(**{**stay.__dict__, "case_id": "case-1", "case_opened_by": e.kind})
    return stay, effects


def test_ready_for_discharge_opens_the_case_with_its_exact_time():
    stay, effects = run(ev("admitted"), ev("ready-for-discharge", 90))
    assert effects == ["none", "open-case"]
    assert stay.ready_at == T0 + timedelta(minutes=90) and stay.admitted_at == T0


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # a resent message and an older event of the same kind have no effect
        (
            [ev("ready-for-discharge", 10, "m1"), ev("ready-for-discharge", 10, "m1")],
            ["open-case", "ignored"],
        ),
        ([ev("ready-for-discharge", 10), ev("ready-for-discharge", 5)], ["open-case", "ignored"]),
        # a discharge without a ready-for-discharge first opens the case; a late older ready moves it earlier
        ([ev("discharged", 60), ev("ready-for-discharge", 10)], ["open-case", "earlier-ready"]),
        ([ev("ready-for-discharge", 10), ev("discharged", 60)], ["open-case", "none"]),
        # A13 after A03: the discharge that opened the case is undone and the case cancelled
        (
            [ev("discharged", 60, "a03"), ev("cancelled", 70, cancels="discharged")],
            ["open-case", "cancel-case"],
        ),
        # ... but a cancelled discharge does not cancel a case opened by ready-for-discharge
        (
            [ev("ready-for-discharge", 10), ev("discharged", 60), ev("cancelled", 70, cancels="discharged")],
            ["open-case", "none", "none"],
        ),
        # A13 before its A03 (out of order): remembered, and the A03 has no effect when it comes
        (
            [ev("cancelled", 70, cancels="discharged", cancels_msg="a03"), ev("discharged", 60, "a03")],
            ["none", "ignored"],
        ),
        (
            [ev("admitted"), ev("cancelled", 70, cancels="discharged"), ev("discharged", 60)],
            ["none", "none", "ignored"],
        ),
        # the same cancellation twice
        (
            [
                ev("discharged", 60, "a03"),
                ev("cancelled", 70, "a13", cancels="discharged"),
                ev("cancelled", 70, "a13", cancels="discharged"),
            ],
            ["open-case", "cancel-case", "ignored"],
        ),
        # A11: the whole stay was wrong
        (
            [ev("admitted"), ev("ready-for-discharge", 10), ev("cancelled", 20, cancels="admitted")],
            ["none", "open-case", "cancel-case"],
        ),
        # ready revoked suspends, ready again resumes; a revocation older than the readiness is stale
        (
            [ev("ready-for-discharge", 10), ev("ready-revoked", 20), ev("ready-for-discharge", 300)],
            ["open-case", "suspend", "resume"],
        ),
        ([ev("ready-for-discharge", 10), ev("ready-revoked", 5)], ["open-case", "ignored"]),
        ([ev("ready-revoked", 20), ev("ready-for-discharge", 10)], ["none", "ignored"]),
        # a cancelled ready-for-discharge that opened the case cancels it
        (
            [
                ev("ready-for-discharge", 10, "r1"),
                ev("cancelled", 20, cancels="ready-for-discharge", cancels_msg="r1"),
            ],
            ["open-case", "cancel-case"],
        ),
        # death closes the case; leave is recorded only
        (
            [
                ev("ready-for-discharge", 10),
                ev("leave-started", 20),
                ev("leave-ended", 30),
                ev("deceased", 40),
            ],
            ["open-case", "none", "none", "close-case"],
        ),
        ([ev("leave-ended", 30), ev("leave-started", 20)], ["none", "ignored"]),
        (
            [
                ev("admitted"),
                ev("expected-discharge-changed", 5, expected_discharge_at=T0 + timedelta(days=2)),
            ],
            ["none", "none"],
        ),
    ],
)
def test_event_sequences(events, expected):
    _, effects = run(*events)
    assert effects == expected


def test_a13_clears_the_discharge_and_a_later_discharge_applies_again():
    stay, effects = run(ev("ready-for-discharge", 10), ev("discharged", 60, "a03"),
                        ev("cancelled", 70, cancels="discharged"), ev("discharged", 120, "a03-again"))  # fmt: skip
    assert effects == ["open-case", "none", "none", "none"]
    assert stay.discharged_at == T0 + timedelta(minutes=120)


def test_kommun_and_primary_care_follow_the_latest_message():
    stay, _ = run(ev("admitted"), ev("corrected", 5, kommun_code="0184", primary_care_unit="VC2"))
    assert (stay.kommun_code, stay.primary_care_unit) == ("0184", "VC2")


def test_revocation_clears_readiness_and_resumption_sets_the_new_time():
    stay, _ = run(ev("ready-for-discharge", 10), ev("ready-revoked", 20))
    assert stay.ready_at is None
    stay, effect = apply(stay, ev("ready-for-discharge", 500))
    assert effect == "resume" and stay.ready_at == T0 + timedelta(minutes=500)


KINDS = [k for k in EVENT_KINDS if k not in ("cancelled", "corrected")]


@st.composite
def event_streams(draw):
    n = draw(st.integers(1, 12))
    out = []
    for i in range(n):
        kind = draw(st.sampled_from([*KINDS, "cancelled"]))
        minute = draw(st.integers(0, 50))
        if kind == "cancelled":
            out.append(ev("cancelled", minute, f"m{i}", cancels=draw(st.sampled_from(KINDS))))
        else:
            out.append(ev(kind, minute, f"m{i}"))
    return out


@settings(max_examples=examples(300), deadline=None)
@given(event_streams())
def test_any_order_any_repetition_never_opens_a_second_live_case_and_redelivery_changes_nothing(events):
    stay = Stay.first(events[0])
    live = False
    for e in events:
        stay, effect = apply(stay, e)
        if effect == "open-case":
            assert not live, "a second case for a stay that has a live one"
            live = True
            stay = Stay(**{**stay.__dict__, "case_id": "c", "case_opened_by": e.kind})
        elif effect in ("cancel-case", "close-case"):
            assert live
            live = effect != "cancel-case" and live
            if effect == "cancel-case":
                stay = Stay(**{**stay.__dict__, "case_id": None, "case_opened_by": None})
        # the same message delivered again right away has no further effect
        again, effect2 = apply(stay, e)
        assert effect2 in ("ignored", "none"), (e.kind, effect2)
        assert again.case_id == stay.case_id
