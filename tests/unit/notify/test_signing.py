"""Webhook signatures: what a receiver checks with ``verify_signature``."""

from __future__ import annotations

import hashlib
import hmac

from services.notify.signing import sign, signature, verify_signature

SECRET = "s3cret-for-SE2321000016-VC001"
BODY = b'{"resourceType":"Communication","id":"7d9f2c1e"}'
NOW = 1_772_438_400  # 2026-03-02T08:00:00Z


def test_a_fresh_signature_verifies():
    header = sign(SECRET, BODY, timestamp=NOW)
    assert header.startswith(f"t={NOW},v1=")
    assert verify_signature(SECRET, BODY, header, now=NOW + 3)


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body():
    """Receivers in any language can recompute it from the documented recipe."""
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, NOW, BODY) == expected
    assert sign(SECRET, BODY, timestamp=NOW) == f"t={NOW},v1={expected}"


def test_a_tampered_body_is_refused():
    header = sign(SECRET, BODY, timestamp=NOW)
    tampered = BODY.replace(b"7d9f2c1e", b"7d9f2c1f")
    assert not verify_signature(SECRET, tampered, header, now=NOW)
    assert not verify_signature(SECRET, BODY + b" ", header, now=NOW)


def test_an_old_timestamp_is_refused_even_with_a_valid_mac():
    header = sign(SECRET, BODY, timestamp=NOW)
    assert verify_signature(SECRET, BODY, header, now=NOW + 299)
    assert not verify_signature(SECRET, BODY, header, now=NOW + 301)  # replayed 5 minutes later
    assert not verify_signature(SECRET, BODY, header, now=NOW - 301)  # from the future
    assert verify_signature(SECRET, BODY, header, now=NOW + 3500, tolerance_seconds=3600)


def test_a_changed_timestamp_is_refused():
    mac = signature(SECRET, NOW, BODY)
    assert not verify_signature(SECRET, BODY, f"t={NOW + 1},v1={mac}", now=NOW)


def test_the_wrong_secret_is_refused():
    header = sign(SECRET, BODY, timestamp=NOW)
    assert not verify_signature("another-organisations-secret", BODY, header, now=NOW)


def test_malformed_headers_are_refused():
    mac = signature(SECRET, NOW, BODY)
    for header in (None, "", "garbage", f"v1={mac}", f"t={NOW}", f"t=soon,v1={mac}", f"t={NOW},{mac}"):
        assert not verify_signature(SECRET, BODY, header, now=NOW), header


def test_one_matching_entry_of_several_is_enough_for_secret_rotation():
    old = signature("old-secret", NOW, BODY)
    new = signature(SECRET, NOW, BODY)
    assert verify_signature(SECRET, BODY, f"t={NOW},v1={old},v1={new}", now=NOW)
    assert verify_signature("old-secret", BODY, f"t={NOW},v1={old},v1={new}", now=NOW)
