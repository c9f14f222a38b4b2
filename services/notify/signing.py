"""Webhook signatures: how notify signs what it posts, and how a receiver checks it.

notify sends the header::

    X-Sip-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

where ``body`` is the exact bytes of the request body and ``secret`` the organisation's shared secret
(configured per HSA-id, never in the directory file). A receiver recomputes the HMAC over the body
*as received* (before any JSON parsing), compares in constant time and refuses an old timestamp,
which stops a captured request from being replayed later. Several ``v1=`` entries may appear (a
secret being rotated); one match is enough.

This module has no dependency on the rest of sip-suite, so a receiver can copy it as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Sip-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


def signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, str(int(timestamp)).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The value of the ``X-Sip-Signature`` header for this body."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={signature(secret, t, body)}"


def verify_signature(
    secret: str | bytes,
    body: bytes,
    header: str | None,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True if ``header`` is a valid signature of ``body`` under ``secret`` and recent enough.

    False for a missing or malformed header, a timestamp more than ``tolerance_seconds`` from now
    (either way), or a signature that does not match (a tampered body, the wrong secret).
    """
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)
