"""Property-based tests of the consent decision (services.consent.policy.decide).

Generated consents (any status, decision, purposes, recipients, exclusions, validity, guardians and
custody), mixed with other people's consents, and generated queries. The properties are the rules
SIP practice demands; each is checked on hundreds of generated cases.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from uuid import UUID

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.consent.domain import (
    ALL_CATEGORIES,
    CONSENT_CATEGORIES,
    INVITATION_LOGISTICS,
    LUS_NOTICES,
    PURPOSES,
    ConsentRecord,
    GuardianStatement,
    category_lineage,
)
from services.consent.policy import DecisionQuery, DecisionResult, decide
from tests.support.examples import examples
from tests.support.personnummer import ADULTS, CHILD

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
ORGS = ("SE2120001-SOC0180", "SE2321000016-VC001", "SE2321000016-SJH01", "SE2120001-SKOLA")
PEOPLE = (CHILD, ADULTS[0], ADULTS[1])
GUARDIAN_IDS = (ADULTS[2], ADULTS[3], ADULTS[4])
CASES = (UUID(int=1), UUID(int=2))
NON_STATUTORY = (INVITATION_LOGISTICS, *CONSENT_CATEGORIES)

PROPS = settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def offsets(lo_days: int = -400, hi_days: int = 400) -> st.SearchStrategy[datetime]:
    return st.integers(lo_days * 24, hi_days * 24).map(lambda h: NOW + timedelta(hours=h))


def subset(items: tuple[str, ...]) -> st.SearchStrategy[tuple[str, ...]]:
    """Often all (so that permits are common enough to test), otherwise any subset."""
    return st.one_of(st.just(items), st.lists(st.sampled_from(items), unique=True).map(tuple))


def some(items: tuple[str, ...]) -> st.SearchStrategy[tuple[str, ...]]:
    """Often none, otherwise any subset (for exclusions)."""
    return st.one_of(st.just(()), st.just(()), st.lists(st.sampled_from(items), unique=True).map(tuple))


guardian = st.builds(
    GuardianStatement,
    stance=st.sampled_from(("consents", "objects")),
    identifier=st.one_of(st.none(), st.sampled_from(GUARDIAN_IDS)),
)


@st.composite
def records(draw: st.DrawFn, patient: st.SearchStrategy[str] = st.sampled_from(PEOPLE)) -> ConsentRecord:
    recorded_at = draw(offsets(-400, 30))
    valid_from = draw(st.one_of(st.none(), offsets(-400, 60)))
    valid_until = draw(st.one_of(st.none(), st.none(), offsets(-100, 600)))
    return ConsentRecord(
        id=draw(st.uuids()),
        patient_identifier=draw(patient),
        case_id=draw(st.one_of(st.none(), st.sampled_from(CASES))),
        decision=draw(st.sampled_from(("granted", "granted", "declined"))),
        purposes=draw(subset(PURPOSES)),
        recipients=draw(subset(ORGS)),
        given_by=draw(st.sampled_from(("patient", "patient", "guardians", "representative"))),
        method=draw(st.sampled_from(("oral", "written"))),
        recorded_by_hsa_id="SE2321000016-REC1",
        recorded_at=recorded_at,
        valid_until=valid_until,
        status=draw(st.sampled_from(("active", "active", "active", "withdrawn", "cancelled"))),
        valid_from=valid_from,
        excluded_organisations=draw(some(ORGS)),
        excluded_categories=draw(some(CONSENT_CATEGORIES)),
        custody=draw(st.sampled_from((None, "joint", "sole"))),
        guardians=tuple(draw(st.one_of(st.just([]), st.lists(guardian, max_size=3)))),
        child_view=draw(st.sampled_from((None, "agrees", "disagrees", "no-view", "not-heard"))),
        status_changed_at=recorded_at + timedelta(days=1),
    )


queries = st.builds(
    DecisionQuery,
    patient_identifier=st.sampled_from(PEOPLE),
    recipient=st.sampled_from(ORGS),
    category=st.one_of(st.sampled_from(CONSENT_CATEGORIES), st.sampled_from(ALL_CATEGORIES)),
    purpose=st.sampled_from(PURPOSES),
    at=offsets(0, 500),
    case_id=st.one_of(st.none(), st.sampled_from(CASES)),
)
record_lists = st.lists(records(), max_size=6)


def _adult_at(pid: str, at: datetime) -> bool:
    born = datetime(int(pid[:4]), int(pid[4:6]), int(pid[6:8]), tzinfo=UTC).date()
    return (at.date().year - born.year - ((at.month, at.day) < (born.month, born.day))) >= 18


def _on_record(q: DecisionQuery, recs: list[ConsentRecord]) -> bool:
    """Does the person have a record (not cancelled) that applies to the query's case?"""
    return any(
        r.patient_identifier == q.patient_identifier
        and r.status != "cancelled"
        and (q.case_id is None or r.case_id in (None, q.case_id))
        for r in recs
    )


def _relied(result: DecisionResult, recs: list[ConsentRecord]) -> ConsentRecord:
    [rec] = [r for r in recs if r.id == result.consent_id]
    return rec


# ---- determinism ------------------------------------------------------------------------------
@PROPS
@given(queries, record_lists, st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_record_order(q, recs, rnd):
    first = decide(q, recs)
    assert decide(q, recs) == first
    shuffled = list(recs)
    rnd.shuffle(shuffled)
    assert decide(q, shuffled) == first
    assert decide(q, tuple(recs)) == first


# ---- soundness: a consent-based permit relies on a record that really covers it ---------------
@PROPS
@given(queries, record_lists)
def test_a_consent_permit_relies_on_a_record_that_covers_everything(q, recs):
    result = decide(q, recs)
    assert result.outcome in ("permit", "deny") and result.reason
    if result.outcome == "deny":
        assert result.basis == "none"
    if result.basis != "consent":
        return
    r = _relied(result, recs)
    assert r.patient_identifier == q.patient_identifier
    assert q.case_id is None or r.case_id in (None, q.case_id)
    assert r.status == "active" and r.decision == "granted"
    assert r.starts_at <= q.at and (r.valid_until is None or q.at < r.valid_until)
    assert q.purpose in r.purposes
    assert q.recipient in r.recipients and q.recipient not in r.excluded_organisations
    assert not set(category_lineage(q.category)) & set(r.excluded_categories)
    assert q.category in CONSENT_CATEGORIES
    assert not any(g.stance == "objects" for g in r.guardians)
    if r.given_by == "guardians":
        assert not _adult_at(q.patient_identifier, q.at)
        consenting = [g for g in r.guardians if g.stance == "consents"]
        assert len(consenting) >= (1 if r.custody == "sole" else 2)


# ---- withdrawn never permits ------------------------------------------------------------------
@PROPS
@given(queries, record_lists, st.sampled_from(NON_STATUTORY))
def test_withdrawn_never_permits(q, recs, category):
    q = dataclasses.replace(q, category=category)
    withdrawn = [dataclasses.replace(r, status="withdrawn") for r in recs]
    result = decide(q, withdrawn)
    if _on_record(q, withdrawn) or category != INVITATION_LOGISTICS:
        assert result.outcome == "deny", result
    else:  # nothing on record for this person and case: LUS allows the invitation
        assert result.basis == "lus-logistics"
    # and a withdrawn record is never the one a permit relies on
    result = decide(q, recs)
    if result.consent_id is not None and result.outcome == "permit":
        assert _relied(result, recs).status == "active"


# ---- excluded never permits -------------------------------------------------------------------
@PROPS
@given(queries, st.lists(records(), min_size=1, max_size=6), st.sampled_from(NON_STATUTORY))
def test_an_excluded_organisation_never_receives(q, recs, category):
    q = dataclasses.replace(q, category=category)
    excluding = [
        dataclasses.replace(r, excluded_organisations=(*r.excluded_organisations, q.recipient)) for r in recs
    ]
    result = decide(q, excluding)
    if _on_record(q, excluding):
        assert result.outcome == "deny", result
    else:
        assert result.outcome == "deny" or result.basis == "lus-logistics"


@PROPS
@given(queries, record_lists, st.sampled_from(CONSENT_CATEGORIES))
def test_an_excluded_category_or_its_parent_is_never_shared(q, recs, category):
    q = dataclasses.replace(q, category=category)
    excluded = category_lineage(category)[-1]  # the broadest: excluding it covers the asked one
    excluding = [dataclasses.replace(r, excluded_categories=(*r.excluded_categories, excluded)) for r in recs]
    assert decide(q, excluding).outcome == "deny"


# ---- expired or not yet valid never permits ---------------------------------------------------
@PROPS
@given(queries, record_lists, st.sampled_from(CONSENT_CATEGORIES), st.integers(0, 1000), st.booleans())
def test_outside_the_validity_period_never_permits(q, recs, category, hours, expired):
    q = dataclasses.replace(q, category=category)
    if expired:  # ended at or before T (the end date itself is no longer valid)
        moved = [dataclasses.replace(r, valid_until=q.at - timedelta(hours=hours)) for r in recs]
    else:  # begins after T
        moved = [dataclasses.replace(r, valid_from=q.at + timedelta(hours=hours + 1)) for r in recs]
    result = decide(q, moved)
    assert result.outcome == "deny"
    if result.consent_id is not None and result.reason not in ("consent-declined", "consent-withdrawn"):
        assert result.reason in (
            "consent-expired",
            "consent-not-yet-valid",
            "guardian-objects",
            "guardian-consent-missing",
            "guardian-consent-lapsed",
        )


# ---- guardians --------------------------------------------------------------------------------
@PROPS
@given(
    queries, st.lists(records(st.just(CHILD)), min_size=1, max_size=6), st.sampled_from(CONSENT_CATEGORIES)
)
def test_joint_custody_needs_both_guardians(q, recs, category):
    q = dataclasses.replace(q, patient_identifier=CHILD, category=category, at=min(q.at, NOW))
    one_consenting = [
        dataclasses.replace(
            r,
            given_by="guardians",
            custody="joint",
            guardians=(GuardianStatement("consents", GUARDIAN_IDS[0]),),
        )
        for r in recs
    ]
    assert decide(q, one_consenting).outcome == "deny"
    # the same guardian twice is still one guardian
    same_twice = [
        dataclasses.replace(r, guardians=(GuardianStatement("consents", GUARDIAN_IDS[0]),) * 2)
        for r in one_consenting
    ]
    assert decide(q, same_twice).outcome == "deny"


@PROPS
@given(queries, st.lists(records(), min_size=1, max_size=6), st.sampled_from(NON_STATUTORY), guardian)
def test_one_objecting_guardian_blocks(q, recs, category, other):
    q = dataclasses.replace(q, category=category)
    objecting = [
        dataclasses.replace(r, guardians=(other, GuardianStatement("objects", GUARDIAN_IDS[2]))) for r in recs
    ]
    result = decide(q, objecting)
    if _on_record(q, objecting):
        assert result.outcome == "deny", result
    else:
        assert result.outcome == "deny" or result.basis == "lus-logistics"


# ---- purposes ---------------------------------------------------------------------------------
@PROPS
@given(queries, record_lists, st.sampled_from(CONSENT_CATEGORIES))
def test_a_purpose_not_consented_never_permits(q, recs, category):
    q = dataclasses.replace(q, category=category)
    without = [dataclasses.replace(r, purposes=tuple(p for p in r.purposes if p != q.purpose)) for r in recs]
    assert decide(q, without).outcome == "deny"


# ---- LUS logistics ----------------------------------------------------------------------------
@PROPS
@given(queries, record_lists, st.sampled_from(LUS_NOTICES))
def test_lus_notices_are_permitted_without_consent_and_say_so(q, recs, category):
    result = decide(dataclasses.replace(q, category=category), recs)
    assert (result.outcome, result.basis, result.reason) == (
        "permit",
        "lus-logistics",
        "lus-statutory-notice",
    )


@PROPS
@given(queries, st.sampled_from(("not-a-category", "lab-results")))
def test_unknown_category_is_denied(q, category):
    assert decide(dataclasses.replace(q, category=category), []).reason == "unknown-category"
