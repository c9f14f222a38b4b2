"""What a SIP holds: the plan content the law and practice require, the person's meeting preferences,
the meeting, and the person's approval. Pydantic models: they are validated where they enter (HTTP)
and stored as JSON with the case.

Plan content (SoL 2:7, HSL 16:4 and practice): the needs today and the person's goals; each
intervention (*insats*) with its goal, who is responsible (an organisation, or the person/relatives
for self-care) and its end date; what others will do; the organisation with overall responsibility
(*huvudansvar*); how the interventions are coordinated; the follow-up date.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.contracts import MeetingNeeds
from shared.text_guards import contains_health_data, contains_personal_number
from shared.timestamps import Timestamp

Text = Annotated[str, Field(min_length=1, max_length=2000)]
Approver = Literal["person", "guardians", "legal-representative"]
ApprovalMethod = Literal["oral", "written", "digital"]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
#: a short text that must say something: trimmed, and blank is refused (422 naming the field)
SaidText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
LocalId = Annotated[str, Field(pattern=r"^[A-Za-z0-9\-]{1,40}$")]
HsaId = Annotated[str, Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9\-]+$")]


#: validation context of a model read back from the store (see :func:`_stored`)
STORED = {"stored": True}


def _stored(info: ValidationInfo) -> bool:
    """Read back from the store: rules tightened after a value entered do not make it unreadable."""
    return bool(info.context and info.context.get("stored"))


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Goal(_Model):
    id: LocalId
    description: Text = Field(description="The person's goal, in the person's words where possible")
    due_date: date | None = None


class Responsible(_Model):
    kind: Literal["organisation", "person", "relative"] = Field(
        description="An organisation, or the person or relatives (self-care, what relatives do)"
    )
    hsa_id: HsaId | None = Field(default=None, description="The organisation's HSA-id (kind organisation)")
    name: ShortText | None = None

    @model_validator(mode="after")
    def _org_needs_id(self) -> Responsible:
        if self.kind == "organisation" and not self.hsa_id:
            raise ValueError("an organisation responsible for an intervention needs its hsa_id")
        return self


class Intervention(_Model):
    id: LocalId
    description: Text
    goal_ids: tuple[LocalId, ...] = Field(default=(), description="The goals this intervention serves")
    responsible: Responsible
    end_date: date | None = None


class PlanContent(_Model):
    needs: tuple[Text, ...] = Field(min_length=1, description="The person's needs today")
    goals: tuple[Goal, ...] = Field(min_length=1)
    interventions: tuple[Intervention, ...] = Field(default=(), max_length=500)
    others: tuple[Text, ...] = Field(
        default=(), description="What others (outside the plan's parties) will do"
    )
    overall_responsibility_hsa_id: HsaId = Field(description="The organisation with overall responsibility")
    coordination: Text = Field(description="How the interventions are coordinated")
    follow_up_date: date

    @model_validator(mode="after")
    def _references(self) -> PlanContent:
        goals = {g.id for g in self.goals}
        if len(goals) != len(self.goals):
            raise ValueError("goal ids must be unique")
        ids = [i.id for i in self.interventions]
        if len(set(ids)) != len(ids):
            raise ValueError("intervention ids must be unique")
        for i in self.interventions:
            unknown = set(i.goal_ids) - goals
            if unknown:
                raise ValueError(
                    f"intervention {i.id} names goals that are not in the plan: {sorted(unknown)}"
                )
        return self


class MeetingPreferences(_Model):
    """What the person has said about the meeting (recorded as data, not free text in a note).

    Everything here is something the participants prepare for, so it travels to notify
    (:func:`meeting_needs`) and every notice a participant acts on states it. The texts are short and
    practical — never health data (notify's guards refuse a text that looks like it)."""

    place: SaidText | None = None
    time_of_day: SaidText | None = Field(default=None, description="e.g. 'förmiddag'")
    longest_duration_minutes: int | None = Field(default=None, ge=10, le=480)
    interpreter_language: str | None = Field(
        default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$", description="BCP 47 code, e.g. 'ar'"
    )
    picture_support: bool = Field(default=False, description="Bildstöd")
    disturbances: SaidText | None = Field(default=None, description="Things that may disturb (to avoid)")
    room: SaidText | None = Field(default=None, description="The room and its surroundings")
    attend_all: bool = Field(default=True, description="Whether the person attends the whole meeting")
    someone_stays_after: bool = Field(
        default=False, description="Someone stays afterwards to go through what was decided"
    )

    @model_validator(mode="before")
    @classmethod
    def _stored_blanks(cls, data: object, info: ValidationInfo) -> object:
        # a preference stored before blanks were refused reads as not given
        if _stored(info) and isinstance(data, dict):
            return {k: None if isinstance(v, str) and not v.strip() else v for k, v in data.items()}
        return data

    @field_validator("place", "time_of_day", "disturbances", "room")
    @classmethod
    def _practical(cls, value: str | None, info: ValidationInfo) -> str | None:
        # these texts go to every participant by e-mail: refused here, not at notify (where the
        # invitation would go to the dead-letter queue instead)
        if value is None or _stored(info):
            return value
        if contains_personal_number(value):
            raise ValueError("must not contain a personal identity number")
        if contains_health_data(value):
            raise ValueError("looks like health data: record what to prepare, not a diagnosis")
        return value


def meeting_needs(prefs: MeetingPreferences | None) -> MeetingNeeds | None:
    """The preferences as the contract carries them to notify; None when there is nothing to prepare."""
    if prefs is None:
        return None
    needs = MeetingNeeds(
        interpreter_language=prefs.interpreter_language,
        picture_support=prefs.picture_support,
        longest_duration_minutes=prefs.longest_duration_minutes,
        someone_stays_after=prefs.someone_stays_after,
        avoid=prefs.disturbances,
        place=prefs.place,
        time_of_day=prefs.time_of_day,
        room=prefs.room,
        attends_whole_meeting=prefs.attend_all,
    )
    return None if needs.empty else needs


class Meeting(_Model):
    start: Timestamp
    end: Timestamp
    location: ShortText | None = Field(default=None, description="Room or address of the meeting")
    video_url: Annotated[str, Field(max_length=500, pattern=r"^https://\S+$")] | None = None

    @model_validator(mode="after")
    def _order(self) -> Meeting:
        if self.end <= self.start:
            raise ValueError("the meeting must end after it starts")
        if not self.location and not self.video_url:
            raise ValueError("a meeting needs a location or a video link")
        return self


class Approval(_Model):
    """The person's (or, for a child, the guardians') recorded approval of one plan version."""

    version: int = Field(ge=1)
    approved_by: Approver
    method: ApprovalMethod
    recorded_by_hsa_id: HsaId
    approved_at: Timestamp


class FollowUp(_Model):
    outcome: Literal["continue", "revise", "close"] = Field(
        description="continue: the plan stays in force with a new follow-up date; revise: a new plan "
        "version is drafted; close: the SIP ends"
    )
    next_follow_up_date: date | None = None
    reason: SaidText | None = Field(default=None, description="Required when closing (trimmed, not blank)")

    @model_validator(mode="after")
    def _needs(self) -> FollowUp:
        if self.outcome == "close" and not self.reason:
            raise ValueError("closing a SIP needs a recorded reason")
        if self.outcome == "continue" and self.next_follow_up_date is None:
            raise ValueError("continuing needs the next follow-up date")
        return self
