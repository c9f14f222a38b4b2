"""Hospital intake for the planning service: HL7 v2 ADT over MLLP and FHIR R4 message bundles.

Self-contained: the planning service wires it in with

    table = intake_tables(metadata)
    intake = IntakeService(engine, table, on_event=enqueue_follow_up)   # async (conn, event)
    mllp = MLLPServer(intake.handle_hl7, host, port); await mllp.start()
    # HTTP: POST $process-message → status, body = await intake.handle_fhir(raw_body)
"""

from shared.hospital import EVENT_KINDS, EventKind, HospitalEvent, PatientIdentifier

from .fhir_messaging import FhirOutcome, parse_message_bundle
from .hl7v2 import Hl7Outcome, parse_adt
from .mllp import FrameDecoder, MLLPServer
from .service import IntakeService, OnEvent, stored_events
from .store import intake_tables

__all__ = [
    "EVENT_KINDS",
    "EventKind",
    "FhirOutcome",
    "FrameDecoder",
    "Hl7Outcome",
    "HospitalEvent",
    "IntakeService",
    "MLLPServer",
    "OnEvent",
    "PatientIdentifier",
    "intake_tables",
    "parse_adt",
    "parse_message_bundle",
    "stored_events",
]
