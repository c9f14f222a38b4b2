"""CarePlan narrative: every state renders ``text`` that keeps to FHIR's narrative rules (txt-1/txt-2,
checked by :mod:`tests.support.narrative_rules`, not by the code that builds it) and says, in Swedish,
what the plan holds — needs, goals, interventions with who is responsible and until when, the
organisation with overall responsibility, the meeting and the follow-up."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.planning.domain import TRANSITIONS
from services.planning.fhir import care_plan
from services.planning.narrative import STATUS_TEXT
from services.planning.plan import MeetingPreferences, PlanContent
from tests.support.examples import examples
from tests.support.narrative_rules import narrative_problems, narrative_text
from tests.unit.planning.test_care_plan_fhir import NOW, SOC, VC, full_case, shaped

STATES = sorted(TRANSITIONS)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("version", ["4.0", "5.0"])
@pytest.mark.parametrize("shape", ["full", "discharge", "followed-up"])
def test_every_state_renders_valid_narrative(state: str, version: str, shape: str) -> None:
    case, at = shaped(state, shape)
    resource = care_plan(case, version=2, at=at, fhir_version=version)
    assert resource["text"]["status"] == "generated"
    assert narrative_problems(resource["text"]) == []
    words = narrative_text(resource["text"])
    assert STATUS_TEXT[resource["status"]] in words
    assert case.reference in words
    # the same text as the unvalidated rendering a system transition stores
    unvalidated = care_plan(case, version=2, at=at, fhir_version=version, validate=False)
    assert unvalidated["text"] == resource["text"]


@pytest.mark.parametrize("state", STATES)
def test_the_narrative_says_what_the_plan_holds(state: str) -> None:
    case = full_case(state)
    resource = care_plan(case, version=1, at=NOW)
    words = narrative_text(resource["text"])
    plan = case.plan_in_force if case.state == "plan_drafted" and case.plan_in_force else case.plan
    assert plan is not None
    for need in plan.needs:
        assert need in words
    for goal in plan.goals:
        assert goal.description in words
        assert goal.due_date is not None and goal.due_date.isoformat() in words
    for i in plan.interventions:
        assert i.description in words
        if i.end_date:
            assert i.end_date.isoformat() in words
    # who is responsible: the organisations by name and HSA-id, the relative by name
    assert f"Soc ({SOC})" in words and f"VC ({VC})" in words and "Dottern" in words
    assert f"Huvudansvar: VC ({VC})" in words
    assert "Samordning VC samordnar" in words
    assert "Andra aktörer Färdtjänst" in words
    assert "Uppföljning: 2027-03-01" in words
    # the meeting: local (Stockholm) time, place, video link, and what the person needs for it
    assert "2026-11-25 kl. 11:00–12:00" in words and "Plats: Rum 3" in words
    assert 'href="https://video.example/x"' in resource["text"]["div"]
    assert "Tolk: arabiska (ar)" in words and "Bildstöd" in words
    digits = case.patient_identifier.replace("-", "")
    assert f"Person: {digits[:8]}-{digits[8:]}" in words
    if resource["status"] in ("revoked", "entered-in-error", "completed") and case.closed_reason:
        assert f"Avslutad: {case.closed_reason}" in words


def test_a_table_row_per_intervention_with_goal_responsible_and_end_date() -> None:
    resource = care_plan(full_case("established", n=3), version=1, at=NOW)
    div = resource["text"]["div"]
    assert f"<tr><td>Insats 1</td><td>Bo kvar hemma</td><td>Soc ({SOC})</td><td>2027-02-01</td></tr>" in div
    assert "<tr><td>Dottern handlar</td><td>–</td><td>Dottern</td><td>tills vidare</td></tr>" in div


def test_before_the_meeting_the_narrative_says_the_plan_is_decided_there() -> None:
    case, at = shaped("invited", "discharge")
    words = narrative_text(care_plan(case, version=1, at=at)["text"])
    assert "Under planering" in words
    assert "beslutas på SIP-mötet tillsammans med personen" in words
    assert "Kallelse till SIP-planering: skickad; senast 2026-11-23 kl. 10:14" in words


def test_a_followed_up_plan_shows_every_preference_and_the_follow_up_done() -> None:
    case, at = shaped("closed", "followed-up")
    words = narrative_text(care_plan(case, version=4, at=at)["text"])
    assert "Avslutad och uppföljd" in words and "(genomförd)" in words
    for text in ("Tolk: somaliska (so)", "Önskad plats: Hemma", "förmiddag", "högst 45 minuter",
                 "Rummet: Litet rum", "Undvik: Ljud", "deltar inte i hela mötet", "Någon stannar efteråt"):  # fmt: skip
        assert text in words


HOSTILE = [
    '<script>alert("x")</script>',
    "Hemtjänst & <b>dagverksamhet</b>",
    '"><img src=x onerror=alert(1)>',
    "]]><!-- <?xml version='1.0'?>",
    "kontroll\x01tecken\x0b och \ufffe",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_plan_texts_are_text_never_markup(text: str) -> None:
    case = full_case("established")
    assert case.plan is not None
    plan = PlanContent.model_validate(
        {
            **case.plan.model_dump(mode="json"),
            "needs": [text],
            "goals": [{"id": "g1", "description": text}],
            "coordination": text,
        }
    )
    prefs = MeetingPreferences(place="Rum <7> & hall", interpreter_language="ar")
    case = dataclasses.replace(case, plan=plan, plan_in_force=plan, preferences=prefs)
    resource = care_plan(case, version=1, at=NOW)
    assert narrative_problems(resource["text"]) == []
    words = narrative_text(resource["text"])
    visible = "".join(c for c in text if c not in "\x01\x0b\ufffe")
    assert " ".join(visible.split()) in words
    assert "Rum <7> & hall" in words


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.text(min_size=1, max_size=60), min_size=3, max_size=3),
    state=st.sampled_from(STATES),
    version=st.sampled_from(["4.0", "5.0"]),
)
def test_any_plan_text_gives_valid_narrative(texts: list[str], state: str, version: str) -> None:
    case = full_case(state)
    assert case.plan is not None
    try:
        plan = PlanContent.model_validate(
            {
                **case.plan.model_dump(mode="json"),
                "needs": [texts[0]],
                "goals": [{"id": "g1", "description": texts[1]}],
                "others": [texts[2]],
            }
        )
    except ValueError:
        return  # a text the plan refuses never reaches the narrative
    case = dataclasses.replace(
        case, plan=plan, plan_in_force=plan if case.plan_in_force else None, opened_at=NOW - timedelta(days=1)
    )
    resource = care_plan(case, version=1, at=NOW, fhir_version=version, validate=False)
    assert narrative_problems(resource["text"]) == []


@pytest.mark.parametrize(
    ("div", "problem"),
    [
        ('<div xmlns="http://www.w3.org/1999/xhtml"><script>x</script></div>', "<script>"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">a</p></div>', "onclick"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><form>a</form></div>', "<form>"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><a href="javascript:x()">a</a></div>', "runs"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><img src="https://x.example/i.png"/>a</div>', "outside"),
        ("<div><p>a</p></div>", "XHTML"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p> </p></div>', "txt-2"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p>a & b</p></div>', "well-formed"),
        ('<p xmlns="http://www.w3.org/1999/xhtml">a</p>', "not an XHTML div"),
    ],
)
def test_the_checker_refuses_what_the_rules_forbid(div: str, problem: str) -> None:
    problems = narrative_problems({"status": "generated", "div": div})
    assert any(problem in p for p in problems), problems
