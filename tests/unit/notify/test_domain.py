from __future__ import annotations

from datetime import timedelta

import pytest

from services.notify.domain import (
    TRANSITIONS,
    DedupeKey,
    InvalidTransition,
    after_failure,
    backoff,
    check_transition,
    email_message_id,
)


def test_backoff_doubles_from_the_base():
    delays = [backoff(n, base_seconds=1.0, max_seconds=300) for n in range(1, 6)]
    assert delays == [timedelta(seconds=s) for s in (1, 2, 4, 8, 16)]


def test_backoff_is_capped():
    assert backoff(9, base_seconds=1.0, max_seconds=300) == timedelta(seconds=256)
    assert backoff(10, base_seconds=1.0, max_seconds=300) == timedelta(seconds=300)
    assert backoff(10_000, base_seconds=1.0, max_seconds=300) == timedelta(seconds=300)


def test_backoff_counts_from_one():
    with pytest.raises(ValueError):
        backoff(0, base_seconds=1.0, max_seconds=300)


@pytest.mark.parametrize(
    "current, new",
    [("pending", "sending"), ("pending", "failed"), ("sending", "sent"), ("sending", "pending"),
     ("sending", "failed")],
)  # fmt: skip
def test_allowed_transitions(current, new):
    check_transition(current, new)


@pytest.mark.parametrize(
    "current, new",
    [("pending", "sent"), ("sent", "pending"), ("sent", "sending"), ("failed", "pending"),
     ("failed", "sending"), ("sent", "failed")],
)  # fmt: skip
def test_forbidden_transitions(current, new):
    with pytest.raises(InvalidTransition):
        check_transition(current, new)


def test_final_states_have_no_way_out():
    assert TRANSITIONS["sent"] == frozenset() and TRANSITIONS["failed"] == frozenset()


def test_after_failure():
    assert after_failure(attempts=1, max_attempts=3, permanent=False) == "pending"
    assert after_failure(attempts=2, max_attempts=3, permanent=False) == "pending"
    assert after_failure(attempts=3, max_attempts=3, permanent=False) == "failed"
    assert after_failure(attempts=1, max_attempts=3, permanent=True) == "failed"


def test_dedupe_key_gives_a_stable_id_and_message_id():
    a = DedupeKey("m-1", "SE2120001-SOC0180", "email")
    assert a.notification_id() == DedupeKey("m-1", "SE2120001-SOC0180", "email").notification_id()
    assert a.notification_id() != DedupeKey("m-2", "SE2120001-SOC0180", "email").notification_id()
    assert a.notification_id() != DedupeKey("m-1", "SE2321000016-VC001", "email").notification_id()
    assert a.notification_id() != DedupeKey("m-1", "SE2120001-SOC0180", "sms").notification_id()
    assert email_message_id(a.notification_id()) == f"<{a.notification_id()}@sip-suite>"
