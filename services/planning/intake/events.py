"""The hospital-stay event model lives in :mod:`shared.hospital` (it is also a message contract)."""

from shared.hospital import EVENT_KINDS, SWEDISH_SYSTEMS, EventKind, HospitalEvent, PatientIdentifier, Source

__all__ = ["EVENT_KINDS", "SWEDISH_SYSTEMS", "EventKind", "HospitalEvent", "PatientIdentifier", "Source"]
