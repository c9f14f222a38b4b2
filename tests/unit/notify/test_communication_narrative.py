"""Communication narrative: a short Swedish ``text`` in every delivery state that keeps to FHIR's
narrative rules and shows the message — and nothing the resource does not hold (no patient)."""

from __future__ import annotations

import dataclasses

import pytest

from services.notify.fhir import communication_resource
from tests.support.narrative_rules import narrative_problems, narrative_text
from tests.unit.notify.test_http_channels import HSA, T, notification

BODY = "Hej!\nNi kallas till SIP-planering.\nÄrende: SIP-2026-4F3A9C <viktigt> & brådskande"


@pytest.mark.parametrize(
    ("status", "attempts", "extra", "expected"),
    [
        ("pending", 0, {}, "Inte skickat ännu"),
        ("sending", 1, {}, "Skickas"),
        ("sent", 1, {"sent_at": T}, "Skickat"),
        ("failed", 5, {"last_error": "HTTP 400"}, "leveransen misslyckades"),
        ("cancelled", 0, {"status_reason": "consent withdrawn"}, "samtycket återkallades"),
    ],
)
def test_every_delivery_state_renders_valid_narrative(status, attempts, extra, expected) -> None:
    n = dataclasses.replace(
        notification("email", "vc@example.se", BODY), status=status, attempts=attempts, **extra
    )
    resource = communication_resource(n)
    assert resource["text"]["status"] == "generated"
    assert narrative_problems(resource["text"]) == []
    words = narrative_text(resource["text"])
    assert expected in words
    assert "Kallelse till SIP-planering – SIP SIP-2026-4F3A9C" in words
    assert f"Mottagare: {HSA}" in words and "Kanal: e-post" in words
    assert "Ärende: SIP-2026-4F3A9C <viktigt> & brådskande" in words
    assert "vc@example.se" not in resource["text"]["div"]  # the address is not in the resource either


def test_the_delivered_payload_carries_it_too() -> None:
    resource = communication_resource(
        notification("webhook", "https://hook.example/x"), sent_at=T, for_delivery=True
    )
    assert narrative_problems(resource["text"]) == []
    assert "Skickat: 2026-03-02 kl. 09:00" in narrative_text(resource["text"])
