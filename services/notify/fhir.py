"""Notification → FHIR R4 ``Communication`` (built and validated with fhir.resources' R4B models).

One resource per notification (one message to one organisation over one channel), id = the
notification id. Two uses:

- the **record** of a delivery (``GET /fhir/Communication/{id}``): ``status`` follows the
  notification — ``preparation`` (not tried yet), ``in-progress`` (being tried or waiting for a
  retry), ``completed`` (delivered, with ``sent``), ``not-done`` (given up, with ``statusReason``);
- the **payload** the webhook channel posts to an organisation's endpoint (``status: completed``,
  ``sent`` = the attempt's time).

A notification stopped by a consent withdrawal (status ``cancelled``) is ``not-done`` with
``statusReason`` ``consent-withdrawn`` (or ``consent-cancelled``) and the reason as text.

Neither carries personal data: no ``subject`` (patient), the text is the guarded notification text.
A notice a participant acts on (invitation, reminder, plan established, follow-up due) also carries
the person's meeting needs as data: the extension ``urn:sip-suite:extension:meeting-needs``
(:func:`needs_extension`), beside the same needs in the text (the "Inför mötet" block).

A pure mapping (no I/O, no clock: the attempt's time is passed in), so it is not an adapter: the
routes (``api.py``) and the dispatcher call it directly.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from fhir.resources.R4B.communication import Communication

from services.notify.domain import CANCEL_REASONS, Notification
from shared.contracts import MeetingNeeds
from shared.fhir import check_required_bindings
from shared.identifiers import HSA_SYSTEM
from shared.narrative import Markup, el, local_time, narrative

NOTIFICATION_SYSTEM = "urn:sip-suite:notification"
CASE_SYSTEM = "urn:sip-suite:sip-case"
KIND_SYSTEM = "urn:sip-suite:codesystem:notification-kind"
CHANNEL_SYSTEM = "urn:sip-suite:codesystem:notification-channel"
STOPPED_SYSTEM = "urn:sip-suite:codesystem:notification-stopped"
MEDIUM_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
# how the message travels: v3 ParticipationMode where it has a code, our own channel code besides
_MEDIUM = {
    "email": ("EMAILWRIT", "email"),
    "webhook": ("ELECTRONIC", "electronic data"),
    "sms": ("WRITTEN", "written"),
}
_KIND_DISPLAY = {
    "invitation": "Kallelse till SIP-planering",
    "reminder": "Påminnelse om SIP-möte",
    "plan-established": "SIP-planen är fastställd",
    "follow-up-due": "Dags att följa upp SIP",
    "deadline-escalation": "Tidsfrist passerad",
    "consent-withdrawn": "Samtycket är återkallat",
    "case-closed": "SIP avslutad",
}


NEEDS_EXTENSION = "urn:sip-suite:extension:meeting-needs"
LANGUAGE_SYSTEM = "urn:ietf:bcp:47"
UCUM = "http://unitsofmeasure.org"


def needs_extension(needs: MeetingNeeds) -> dict[str, Any]:
    """The person's meeting needs as one complex extension (issue #22): a sub-extension per need that
    is recorded — ``interpreter-language`` (valueCoding, BCP 47), ``picture-support``,
    ``someone-stays-after``, ``attends-whole-meeting`` (valueBoolean), ``longest-duration``
    (valueDuration, minutes in UCUM), ``avoid``, ``place``, ``time-of-day``, ``room`` (valueString).
    No identifier, no health data (the texts passed the same guards as the notification text)."""
    parts: list[dict[str, Any]] = []
    if needs.interpreter_language:
        code = {"system": LANGUAGE_SYSTEM, "code": needs.interpreter_language}
        parts.append({"url": "interpreter-language", "valueCoding": code})
    parts.append({"url": "picture-support", "valueBoolean": needs.picture_support})
    if needs.longest_duration_minutes:
        minutes = {"value": needs.longest_duration_minutes, "unit": "min", "system": UCUM, "code": "min"}
        parts.append({"url": "longest-duration", "valueDuration": minutes})
    parts.append({"url": "someone-stays-after", "valueBoolean": needs.someone_stays_after})
    parts.append({"url": "attends-whole-meeting", "valueBoolean": needs.attends_whole_meeting})
    for field, url in (
        ("avoid", "avoid"),
        ("place", "place"),
        ("time_of_day", "time-of-day"),
        ("room", "room"),
    ):
        value = getattr(needs, field)
        if value:
            parts.append({"url": url, "valueString": value})
    return {"url": NEEDS_EXTENSION, "extension": parts}


def _status(n: Notification) -> str:
    if n.status == "sent":
        return "completed"
    if n.status in ("failed", "cancelled"):
        return "not-done"
    if n.status == "sending" or n.attempts > 0:
        return "in-progress"
    return "preparation"


_STATUS_TEXT = {
    "preparation": "Inte skickat ännu",
    "in-progress": "Skickas",
    "completed": "Skickat",
    "not-done": "Inte skickat",
}
_CHANNEL_TEXT = {"email": "e-post", "webhook": "elektroniskt (webhook)", "sms": "sms"}
_STOPPED_TEXT = {
    "consent-withdrawn": "samtycket återkallades",
    "consent-cancelled": "samtycket makulerades",
    "superseded": "ersatt av en senare kallelse",
    "meeting-started": "mötet hade redan börjat",
}


def communication_text(n: Notification, status: str, when: datetime | None) -> dict[str, str]:
    """A short Swedish narrative (``Communication.text``): what kind of message, to whom, how, its
    state and the message itself — no more than the resource holds (no personal data)."""
    head = [
        f"Mottagare: {n.recipient_hsa_id}",
        el("br"),
        f"Kanal: {_CHANNEL_TEXT.get(n.channel, n.channel)}",
        el("br"),
        f"Status: {_STATUS_TEXT.get(status, status)}",
    ]
    if when is not None:
        head += [el("br"), f"Skickat: {local_time(when)}"]
    if status == "not-done":
        code = next((c for c, text in CANCEL_REASONS.items() if text == n.status_reason), None)
        why = _STOPPED_TEXT.get(code or "", "leveransen misslyckades" if n.status == "failed" else "")
        if why:
            head += [el("br"), f"Orsak: {why}"]
    body: list[str | Markup] = []
    for line in n.body.splitlines():
        body += [line, el("br")]
    return narrative(
        el("p", el("b", f"{_KIND_DISPLAY.get(n.kind, n.kind)} – SIP {n.case_reference}")),
        el("p", head),
        el("p", el("b", n.subject)),
        el("p", body[:-1]) if body else None,
    )


def communication_resource(
    n: Notification, *, sent_at: datetime | None = None, for_delivery: bool = False
) -> dict[str, Any]:
    """The notification as a validated FHIR R4 Communication (JSON-ready dict)."""
    code, display = _MEDIUM.get(n.channel, ("ELECTRONIC", "electronic data"))
    data: dict[str, Any] = {
        "resourceType": "Communication",
        "id": str(n.id),
        "identifier": [
            {"system": NOTIFICATION_SYSTEM, "value": str(n.id)},
            {"system": CASE_SYSTEM, "value": n.case_reference},
        ],
        "status": "completed" if for_delivery else _status(n),
        "category": [
            {
                "coding": [
                    {"system": KIND_SYSTEM, "code": n.kind, "display": _KIND_DISPLAY.get(n.kind, n.kind)}
                ]
            }
        ],
        "medium": [
            {
                "coding": [
                    {"system": MEDIUM_SYSTEM, "code": code, "display": display},
                    {"system": CHANNEL_SYSTEM, "code": n.channel},
                ]
            }
        ],
        "recipient": [
            {"type": "Organization", "identifier": {"system": HSA_SYSTEM, "value": n.recipient_hsa_id}}
        ],
        "topic": {"text": n.subject},
        "payload": [{"contentString": n.body}],
        "extension": [
            {"url": "urn:sip-suite:extension:sip-case-id", "valueString": str(n.case_id)},
        ],
    }
    if n.language:
        data["language"] = n.language
    if n.plan_url:  # the plan (a FHIR reference; plan_url is the page people read it on)
        data["about"] = [{"reference": f"CarePlan/{n.case_id}", "type": "CarePlan"}]
    if n.sender_hsa_id:
        data["sender"] = {
            "type": "Organization",
            "identifier": {"system": HSA_SYSTEM, "value": n.sender_hsa_id},
        }
    else:
        data["sender"] = {"display": "sip-suite"}
    when = sent_at if for_delivery else n.sent_at
    if when is not None:
        data["sent"] = when.isoformat()
    if not for_delivery and n.status == "failed":
        data["statusReason"] = {
            "coding": [
                {
                    "system": "urn:sip-suite:codesystem:notification-failure",
                    "code": "delivery-failed",
                    "display": "Delivery failed",
                }
            ],
            "text": n.last_error or "delivery failed",
        }
    if not for_delivery and n.status == "cancelled":
        reason = n.status_reason or CANCEL_REASONS["consent-withdrawn"]
        code = next((c for c, text in CANCEL_REASONS.items() if text == reason), "consent-withdrawn")
        data["statusReason"] = {
            "coding": [{"system": STOPPED_SYSTEM, "code": code, "display": CANCEL_REASONS[code]}],
            "text": reason,
        }
    if n.meeting_needs is not None:
        data["extension"].append(needs_extension(n.meeting_needs))
    if n.correlation_id:
        data["extension"].append(
            {"url": "urn:sip-suite:extension:correlation-id", "valueString": n.correlation_id}
        )
    data["text"] = communication_text(n, data["status"], when)
    if not for_delivery:
        # a notification has no version counter: its version is its content (the ETag changes with it)
        digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
        data["meta"] = {"versionId": digest, "lastUpdated": n.updated_at.isoformat()}
    model = Communication.model_validate(data)
    check_required_bindings(model)
    return model.model_dump(mode="json", exclude_none=True)
