"""The MedCom acknowledgement (*kvittering*) that answers a MedCom HospitalNotification.

MedCom FHIR messaging (DK) acknowledges every message with a **MedComAcknowledgementMessage**
(profile ``medcom-messaging-acknowledgement``, MedCom Acknowledgement IG 2.0), not with FHIR's bare
response message:

- a ``Bundle`` of type ``message`` with an ``id``, a ``timestamp`` and the profile in ``meta``;
- a ``MessageHeader`` (``medcom-messaging-acknowledgementHeader``): ``eventCoding``
  ``medcom-messaging-eventCodes#acknowledgement-message``; the acknowledging organisation as
  ``sender`` and ``source.endpoint`` (the notification's primary destination); the notification's
  sender as the primary ``destination`` (with MedCom's destinationUse extension), at the endpoint it
  sent from; ``response.identifier`` = the notification's ``MessageHeader.id`` and ``response.code``
  ``ok`` / ``transient-error`` / ``fatal-error`` — and ``response.details`` → an ``OperationOutcome``
  in the Bundle when the code is not ``ok`` (invariant medcom-acknowledgement-1);
- a ``Provenance`` (``medcom-messaging-provenance``) for the acknowledgement: ``target`` the
  acknowledgement's MessageHeader, ``occurredDateTime`` and ``recorded``, ``activity``
  ``medcom-messaging-activityCodes#acknowledgement``, ``agent.who`` the acknowledging organisation,
  ``entity`` role ``revision`` → ``MessageHeader/[id]`` of the notification; beside it the
  notification's own Provenance, as MedCom's examples carry both;
- the two ``Organization`` resources (MedComMessagingOrganization, SOR and EAN identifiers) copied
  from the notification, where the sender and receiver references point;
- narrative (``text``) on the MessageHeader and the Provenance, which MedCom requires.

Ids are UUIDs derived from the notification's MessageHeader.id, so the same notification always gets
the same acknowledgement (a resent one is answered from the store anyway). ``fullUrl`` is absolute,
``[fhir base]/[type]/[id]``; references inside are ``[type]/[id]``, resolved against it. Pure.
"""

from __future__ import annotations

import copy
import uuid
from datetime import datetime
from typing import Any, Literal

from shared.narrative import el, narrative

ResponseCode = Literal["ok", "transient-error", "fatal-error"]

EVENT_SYSTEM = "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-eventCodes"
ACTIVITY_SYSTEM = "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-activityCodes"
DESTINATION_USE_EXTENSION = (
    "http://medcomfhir.dk/ig/messaging/StructureDefinition/medcom-messaging-destinationUseExtension"
)
DESTINATION_USE_SYSTEM = "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-destinationUse"
ACK_PROFILE = "http://medcomfhir.dk/ig/acknowledgement/StructureDefinition/medcom-messaging-acknowledgement"
ACK_HEADER_PROFILE = (
    "http://medcomfhir.dk/ig/acknowledgement/StructureDefinition/medcom-messaging-acknowledgementHeader"
)
ACK_OUTCOME_PROFILE = (
    "http://medcomfhir.dk/ig/acknowledgement/StructureDefinition/medcom-acknowledgement-operationoutcome"
)
PROVENANCE_PROFILE = "http://medcomfhir.dk/ig/messaging/StructureDefinition/medcom-messaging-provenance"
HOSPITAL_NOTIFICATION_EVENT = "hospital-notification-message"
#: our own endpoint when the notification names no primary destination endpoint
OWN_ENDPOINT = "urn:sip-suite:planning:intake"
_NAMESPACE = uuid.UUID("0b7e3a52-5c1f-4b8e-9a55-6d2f0f1c7a18")


def is_hospital_notification(doc: dict[str, Any]) -> bool:
    """A MedCom HospitalNotification: its MessageHeader's event is ``hospital-notification-message``
    (MedCom's event system, or none given), or the Bundle claims a MedCom HospitalNotification profile."""
    header = _header(doc)
    event: Any = header.get("eventCoding") if isinstance(header.get("eventCoding"), dict) else {}
    system = str(event.get("system") or "")
    if event.get("code") == HOSPITAL_NOTIFICATION_EVENT and (not system or "medcom" in system):
        return True
    meta: Any = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    profiles: Any = meta.get("profile") if isinstance(meta.get("profile"), list) else []
    return any(isinstance(p, str) and "medcomfhir.dk/" in p and "hospitalnotification" in p for p in profiles)


def acknowledgement(
    doc: dict[str, Any],
    *,
    code: ResponseCode,
    at: datetime,
    fhir_base: str,
    issues: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The MedComAcknowledgementMessage for the notification ``doc`` (a parsed message Bundle)."""
    header = _header(doc)
    message_id = str(header.get("id") or doc.get("id") or "")
    ids = {part: _uid(message_id, code, part) for part in ("bundle", "header", "provenance", "outcome")}
    base = fhir_base.rstrip("/")
    index = _index(doc)
    notifier = _ref_id(header.get("sender"), "Organization")
    primary = _primary_destination(header)
    acknowledger = _ref_id(primary.get("receiver"), "Organization")
    source: Any = header.get("source") if isinstance(header.get("source"), dict) else {}
    their_endpoint = _str(source.get("endpoint")) or None
    our_endpoint = _str(primary.get("endpoint")) or OWN_ENDPOINT
    stamp = _instant(at)

    entries: list[tuple[str, dict[str, Any]]] = []
    ack_header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "id": ids["header"],
        "meta": {"profile": [ACK_HEADER_PROFILE]},
        "eventCoding": {"system": EVENT_SYSTEM, "code": "acknowledgement-message"},
        "destination": [
            {
                "extension": [
                    {
                        "url": DESTINATION_USE_EXTENSION,
                        "valueCoding": {"system": DESTINATION_USE_SYSTEM, "code": "primary"},
                    }
                ],
                **({"endpoint": their_endpoint} if their_endpoint else {"endpoint": OWN_ENDPOINT}),
                **({"receiver": {"reference": f"Organization/{notifier}"}} if notifier else {}),
            }
        ],
        **({"sender": {"reference": f"Organization/{acknowledger}"}} if acknowledger else {}),
        "source": {"endpoint": our_endpoint, "software": "sip-suite planning"},
        "response": {"identifier": message_id, "code": code},
    }
    if code != "ok":
        ack_header["response"]["details"] = {"reference": f"OperationOutcome/{ids['outcome']}"}
    ack_header["text"] = narrative(
        el("p", el("b", f"Acknowledgement {ids['header']}: {code}")),
        el(
            "p",
            f"Event: acknowledgement-message; answers MessageHeader/{message_id}",
            el("br"),
            f"Sender: Organization/{acknowledger or '-'} ({our_endpoint})",
            el("br"),
            f"Destination: Organization/{notifier or '-'} ({their_endpoint or OWN_ENDPOINT})",
        ),
    )
    entries.append(("MessageHeader", ack_header))

    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": ids["provenance"],
        "meta": {"profile": [PROVENANCE_PROFILE]},
        "target": [{"reference": f"MessageHeader/{ids['header']}"}],
        "occurredDateTime": stamp,
        "recorded": stamp,
        "activity": {"coding": [{"system": ACTIVITY_SYSTEM, "code": "acknowledgement"}]},
        "agent": [
            {
                "who": {"reference": f"Organization/{acknowledger}"}
                if acknowledger
                else {"display": "sip-suite"}
            }
        ],
        "entity": [{"role": "revision", "what": {"reference": f"MessageHeader/{message_id}"}}],
    }
    provenance["text"] = narrative(
        el("p", el("b", f"Provenance {ids['provenance']}: acknowledgement")),
        el(
            "p",
            f"Target: MessageHeader/{ids['header']}; occurred {stamp}",
            el("br"),
            f"Agent: Organization/{acknowledger or '-'}; revision of MessageHeader/{message_id}",
        ),
    )
    entries.append(("Provenance", provenance))
    for prov in _their_provenance(index, message_id):
        entries.append(("Provenance", copy.deepcopy(prov)))
    for org_id in dict.fromkeys(x for x in (acknowledger, notifier) if x):
        org = index.get(("Organization", org_id))
        if org is not None:
            entries.append(("Organization", copy.deepcopy(org)))
    if code != "ok":
        entries.append(
            (
                "OperationOutcome",
                {
                    "resourceType": "OperationOutcome",
                    "id": ids["outcome"],
                    "meta": {"profile": [ACK_OUTCOME_PROFILE]},
                    "issue": issues or [{"severity": "error", "code": "processing"}],
                },
            )
        )
    return {
        "resourceType": "Bundle",
        "id": ids["bundle"],
        "meta": {"profile": [ACK_PROFILE]},
        "type": "message",
        "timestamp": stamp,
        "entry": [{"fullUrl": f"{base}/{kind}/{res['id']}", "resource": res} for kind, res in entries],
    }


def _uid(message_id: str, code: str, part: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{message_id}|{code}|{part}"))


def _instant(at: datetime) -> str:
    text = at.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _header(doc: dict[str, Any]) -> dict[str, Any]:
    entries: Any = doc.get("entry") if isinstance(doc.get("entry"), list) else []
    first: Any = entries[0] if entries and isinstance(entries[0], dict) else {}
    res: Any = first.get("resource") if isinstance(first.get("resource"), dict) else {}
    return res if res.get("resourceType") == "MessageHeader" else {}


def _primary_destination(header: dict[str, Any]) -> dict[str, Any]:
    destinations = [d for d in header.get("destination") or [] if isinstance(d, dict)]
    for d in destinations:
        for ext in d.get("extension") or []:
            coding = ext.get("valueCoding") if isinstance(ext, dict) else None
            if isinstance(coding, dict) and coding.get("code") == "primary":
                return d
    return destinations[0] if destinations else {}


def _ref_id(ref: Any, kind: str) -> str | None:
    target = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(target, str) or f"{kind}/" not in target:
        return None
    return target.rstrip("/").split("/")[-1] or None


def _index(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in doc.get("entry") or []:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(res, dict) and isinstance(res.get("id"), str):
            out[(str(res.get("resourceType")), res["id"])] = res
    return out


def _their_provenance(index: dict[tuple[str, str], dict[str, Any]], message_id: str) -> list[dict[str, Any]]:
    """The notification's Provenance: the one whose target is its MessageHeader."""
    wanted = f"MessageHeader/{message_id}"
    return [
        res
        for (kind, _), res in index.items()
        if kind == "Provenance"
        and any(
            isinstance(t, dict) and isinstance(t.get("reference"), str) and t["reference"].endswith(wanted)
            for t in res.get("target") or []
        )
    ]
