"""Consent narrative: every state of a consent renders a short Swedish ``text`` that keeps to FHIR's
narrative rules (checked by tests.support.narrative_rules) and says what the consent covers."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from services.consent.domain import GuardianStatement
from services.consent.fhir import consent_resource
from tests.support.narrative_rules import narrative_problems, narrative_text
from tests.support.personnummer import ADULT, CHILD
from tests.unit.consent.test_consent_rules import NOW, record

VARIANTS = {
    "granted": record(valid_until=NOW + timedelta(days=90)),
    "declined": record(decision="declined"),
    "withdrawn": record(status="withdrawn", status_changed_at=NOW + timedelta(days=2), status_changed_by_hsa_id="person"),
    "cancelled": record(status="cancelled", status_changed_at=NOW + timedelta(hours=1),
                        status_changed_by_hsa_id="SE-REC", status_reason="wrong-person"),
    "exclusions": record(purposes=("draw-up-plan", "share-information", "send-invitation"),
                         excluded_organisations=("SE-SCHOOL",), excluded_categories=("psychiatric",)),
    "child": record(patient_identifier=CHILD, given_by="guardians", custody="joint", child_view="agrees",
                    guardians=(GuardianStatement("consents"), GuardianStatement("consents"))),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("version", ["4.0", "5.0"])
def test_every_consent_renders_valid_narrative(name: str, version: str) -> None:
    resource = consent_resource(VARIANTS[name], version)  # type: ignore[arg-type]
    assert resource["text"]["status"] == "generated"
    assert narrative_problems(resource["text"]) == []


def test_the_narrative_says_what_the_consent_covers() -> None:
    words = narrative_text(consent_resource(VARIANTS["exclusions"])["text"])
    assert "Samtycke lämnat – gällande" in words
    assert ADULT in words and "Personen själv, muntligt" in words
    assert "Upprätta samordnad individuell plan" in words and "Skicka kallelse till SIP-möte" in words
    assert "Mottagare: SE-A, SE-B" in words
    assert "Gäller inte: SE-SCHOOL; Psykiatrisk vård och historik" in words


def test_withdrawn_cancelled_expired_and_declined_say_so() -> None:
    assert "Samtycke nekat" in narrative_text(consent_resource(VARIANTS["declined"])["text"])
    withdrawn = narrative_text(consent_resource(VARIANTS["withdrawn"])["text"])
    assert "återkallat" in withdrawn and "Återkallat 2026-11-22" in withdrawn
    cancelled = narrative_text(consent_resource(VARIANTS["cancelled"])["text"])
    assert "makulerat" in cancelled and "(wrong-person)" in cancelled
    expired = consent_resource(VARIANTS["granted"], now=NOW + timedelta(days=91))
    assert expired["status"] == "inactive" and "upphört" in narrative_text(expired["text"])
    child = narrative_text(consent_resource(VARIANTS["child"])["text"])
    assert "Vårdnadshavare: 1: samtycker; 2: samtycker" in child and "barnet instämmer" in child


def test_texts_from_outside_are_escaped() -> None:
    hostile = dataclasses.replace(VARIANTS["granted"], recipients=("SE-<script>&",))
    resource = consent_resource(hostile)
    assert narrative_problems(resource["text"]) == []
    assert "SE-<script>&" in narrative_text(resource["text"])
