"""CarePlan rendering: every state renders valid R4 (R4B models) and R5; 50 interventions round-trip;
the rendering without the fhir.resources round trip (system transitions) is exactly the validated one."""

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta, timezone
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.careplan import CarePlan as CarePlanR5
from fhir.resources.R4B.careplan import CarePlan as CarePlanR4
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.planning.domain import TRANSITIONS, Participant, SipCase
from services.planning.fhir import care_plan, provenance
from services.planning.plan import Approval, Meeting, MeetingPreferences, PlanContent
from shared.fhir import FhirValidationError, check_required_bindings
from tests.support.examples import examples
from tests.support.personnummer import ADULT, SAMORDNINGSNUMMER

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
SOC, VC = "SE2120001-SOC0180", "SE2321000016-VC001"


def content(n: int) -> PlanContent:
    return PlanContent.model_validate({
        "needs": ["Stöd i hemmet"], "goals": [{"id": "g1", "description": "Bo kvar hemma", "due_date": "2027-06-01"}],
        "interventions": [{"id": f"i{k}", "description": f"Insats {k}", "goal_ids": ["g1"],
                           "responsible": {"kind": "organisation", "hsa_id": SOC if k % 2 else VC},
                           "end_date": "2027-02-01"} for k in range(n)]
        + [{"id": "rel", "description": "Dottern handlar", "responsible": {"kind": "relative", "name": "Dottern"}}],
        "others": ["Färdtjänst"], "overall_responsibility_hsa_id": VC, "coordination": "VC samordnar",
        "follow_up_date": "2027-03-01",
    })  # fmt: skip


def full_case(state: str, n: int = 5, pnr: str = ADULT) -> SipCase:
    c = content(n)
    return SipCase(
        id=uuid4(), reference="SIP-2026-ABC123", hospital_hsa_id="SE2321000016-SJH01", episode_id="V1",
        patient_identifier=pnr, is_child=False, kommun_code="0180", owner_hsa_id=VC,
        participants=(Participant(SOC, "Soc", "kommun_social_services"), Participant(VC, "VC", "primary_care_unit")),
        state=state, opened_at=NOW, ready_for_discharge_at=NOW, invitation_due_at=NOW + timedelta(days=3),
        invited_at=NOW + timedelta(days=1), closed_reason="deceased" if state in ("closed", "cancelled", "refused") else None,
        preferences=MeetingPreferences(interpreter_language="ar", picture_support=True),
        meeting=Meeting(start=NOW + timedelta(days=5), end=NOW + timedelta(days=5, hours=1), location="Rum 3",
                        video_url="https://video.example/x"),
        plan=c, plan_in_force=c if state in ("established", "follow_up_due") else None,
        approval=Approval(version=3, approved_by="person", method="oral", recorded_by_hsa_id=VC, approved_at=NOW),
        follow_up_date=date(2027, 3, 1),
    )  # fmt: skip


@pytest.mark.parametrize("state", sorted(TRANSITIONS))
@pytest.mark.parametrize("version", ["4.0", "5.0"])
def test_every_state_renders_valid_fhir(state, version):
    resource = care_plan(full_case(state), version=2, at=NOW, fhir_version=version)
    model = (CarePlanR5 if version == "5.0" else CarePlanR4).model_validate(resource)
    check_required_bindings(model)  # also the codes fhir.resources does not check


STOCKHOLM = ZoneInfo("Europe/Stockholm")


def shaped(state: str, shape: str) -> tuple[SipCase, datetime]:
    """The case (and the version's time) in the shapes a stored version takes."""
    case = full_case(state)
    if shape == "full":  # everything a case can hold, UTC times on the second
        return case, NOW
    if shape == "discharge":
        # a case opened by a discharge, as consent given / invitation sent render it: no plan, meeting or
        # preferences; clock times with microseconds; a due time still in Stockholm time (before the
        # database round trip gives it back in UTC); the three organisations of the directory
        opened = datetime(2026, 11, 20, 9, 14, 7, 123456, tzinfo=UTC)
        case = dataclasses.replace(
            case, opened_at=opened, ready_for_discharge_at=opened - timedelta(hours=2),
            invitation_due_at=(opened + timedelta(days=3)).astimezone(STOCKHOLM),
            invited_at=opened + timedelta(hours=1) if state != "invitation_requested" else None,
            participants=(*case.participants, Participant("SE2321000016-SJH01", "Sjukhuset", "hospital")),
            preferences=None, meeting=None, plan=None, plan_in_force=None, approval=None,
        )  # fmt: skip
        return case, datetime(2026, 11, 20, 9, 15, 0, 500, tzinfo=UTC)
    # followed up and closed, times in other offsets, a video-only meeting, every preference
    offset = timezone(timedelta(hours=-5, minutes=-30))
    start = datetime(2027, 1, 5, 13, 0, 0, 1, tzinfo=offset)
    prefs = MeetingPreferences(place="Hemma", time_of_day="förmiddag", longest_duration_minutes=45,
                               interpreter_language="so", picture_support=True, disturbances="Ljud",
                               room="Litet rum", attend_all=False, someone_stays_after=True)  # fmt: skip
    case = dataclasses.replace(
        case, opened_at=NOW.astimezone(STOCKHOLM), invitation_due_at=None, followed_up_at=NOW,
        meeting=Meeting(start=start, end=start + timedelta(minutes=45), video_url="https://video.example/y"),
        preferences=prefs, closed_reason="uppföljd och klar" if state in ("closed", "cancelled") else None,
    )  # fmt: skip
    return case, NOW.astimezone(offset)


@pytest.mark.parametrize("state", sorted(TRANSITIONS))
@pytest.mark.parametrize("version", ["4.0", "5.0"])
@pytest.mark.parametrize("shape", ["full", "discharge", "followed-up"])
def test_the_unvalidated_rendering_is_exactly_the_validated_one(state, version, shape):
    """A system transition stores ``validate=False``'s dict: it must be what validation returns (and the
    stored JSON what GET /fhir/CarePlan serves) — no "+00:00" for "Z", no empty list, no tuple or date."""
    case, at = shaped(state, shape)
    validated = care_plan(case, version=2, at=at, fhir_version=version)
    unvalidated = care_plan(case, version=2, at=at, fhir_version=version, validate=False)
    assert unvalidated == validated
    assert json.loads(json.dumps(unvalidated)) == validated  # JSON types only
    for sent in (True, False):
        assert care_plan(
            case, version=3, at=at, invitation_sent=sent, fhir_version=version, validate=False
        ) == (care_plan(case, version=3, at=at, invitation_sent=sent, fhir_version=version))


_zones = st.sampled_from([UTC, STOCKHOLM, ZoneInfo("America/St_Johns"), timezone(timedelta(hours=14))])
_times = st.datetimes(min_value=datetime(1950, 1, 1), max_value=datetime(2200, 1, 1), timezones=_zones)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(opened=_times, due=_times, at=_times, start=_times, state=st.sampled_from(sorted(TRANSITIONS)),
       version=st.sampled_from(["4.0", "5.0"]))  # fmt: skip
def test_any_times_render_as_validation_would(opened, due, at, start, state, version):
    case = dataclasses.replace(
        full_case(state), opened_at=opened, invitation_due_at=due,
        meeting=Meeting(start=start, end=start + timedelta(hours=1), location="Rum 3"),
    )  # fmt: skip
    validated = care_plan(case, version=1, at=at, fhir_version=version)
    assert care_plan(case, version=1, at=at, fhir_version=version, validate=False) == validated


@pytest.mark.parametrize("version", ["4.0", "5.0"])
def test_a_50_intervention_plan_round_trips(version):
    model_class = CarePlanR5 if version == "5.0" else CarePlanR4
    resource = care_plan(full_case("established", n=50), version=7, at=NOW, fhir_version=version)
    again = model_class.model_validate_json(model_class.model_validate(resource).model_dump_json())
    assert again.model_dump(mode="json", exclude_none=True) == resource
    tasks = [r for r in again.contained if r.get_resource_type() == "Task"]
    if version == "5.0":
        assert len([a for a in again.activity if a.plannedActivityReference]) == 51 + 3
        assert len(tasks) == 51 + 2  # insatser + invitation + follow-up
    else:
        details = [a.detail for a in again.activity if a.detail]
        assert len(details) == 51 and details[0].goal[0].reference == "#goal-g1"
        assert details[-1].performer[0].display == "Dottern"


def test_r4_and_r5_differ_where_the_versions_do():
    case = full_case("established")
    r4 = care_plan(case, version=1, at=NOW)
    r5 = care_plan(case, version=1, at=NOW, fhir_version="5.0")
    assert "author" in r4 and "custodian" in r5 and "author" not in r5
    appt4 = next(r for r in r4["contained"] if r["resourceType"] == "Appointment")
    appt5 = next(r for r in r5["contained"] if r["resourceType"] == "Appointment")
    assert "https://video.example/x" in appt4["comment"] and appt5["virtualService"][0][
        "addressUrl"
    ].endswith("/x")
    team4 = next(r for r in r4["contained"] if r["resourceType"] == "CareTeam")
    team5 = next(r for r in r5["contained"] if r["resourceType"] == "CareTeam")
    assert isinstance(team4["participant"][0]["role"], list) and isinstance(
        team5["participant"][0]["role"], dict
    )
    assert r4["addresses"][0] == {"reference": "#need-1"} and r5["addresses"][0] == {
        "reference": {"reference": "#need-1"}
    }
    assert any("tolk: ar" in n["text"] for n in r4["note"])


def test_samordningsnummer_subject():
    r = care_plan(full_case("invited", pnr=SAMORDNINGSNUMMER), version=1, at=NOW)
    assert r["subject"]["identifier"]["system"].endswith("/samordningsnummer")


def test_a_bad_code_is_refused_naming_the_element():
    resource = care_plan(full_case("established"), version=1, at=NOW)
    appt = next(r for r in resource["contained"] if r["resourceType"] == "Appointment")
    appt["status"] = "maybe"
    with pytest.raises(FhirValidationError) as err:
        check_required_bindings(CarePlanR4.model_validate(resource))
    assert err.value.element == "CarePlan.contained[4].status" or "status" in err.value.element
    assert "maybe" in str(err.value)


@pytest.mark.parametrize("version", ["4.0", "5.0"])
def test_provenance_is_valid(version):
    p = provenance("c1", 3, NOW, "UPDATE", VC, "plan drafted", version)
    assert p["target"][0]["reference"] == "CarePlan/c1/_history/3"
    assert p["agent"][0]["who"]["identifier"]["value"] == VC
