"""HTTP API of consent: record, withdraw and cancel consents; read them (plain JSON and FHIR Consent,
R4 by default, R5 on request, with history); decide "may X receive Y"; read the audit log.

Every route carries its authorization rule (``openapi_extra``, :data:`services.consent.access.RULES`)
and asks :mod:`services.consent.access` — from the verified token only — before it answers: 401
without a caller, 403 (an OperationOutcome ``forbidden`` on FHIR paths) or a filtered answer.
``recorded_by_hsa_id`` / ``cancelled_by_hsa_id`` in a body are optional and must then be the token's
HSA-id; the stored actor is always the token's. Every read and search of a person's data — consents
and the audit trail itself, permitted or refused — is written to the audit log (committed) before
the answer leaves.

The routes live by use case, each module with a module-level ``router`` whose route functions take
their shared dependencies (:class:`~services.consent.api_deps.ConsentApi`, on
``app.state.consent_api``) as a FastAPI dependency:

- :mod:`services.consent.api_consents` — record, withdraw, cancel, read and list consents; the
  cases waiting for one
- :mod:`services.consent.api_decisions` — "may X receive Y"
- :mod:`services.consent.api_audit` — the audit log as JSON
- :mod:`services.consent.api_fhir` — FHIR Consent and AuditEvent, and the CapabilityStatement
- :mod:`services.consent.api_schemas` — the JSON bodies; :mod:`services.consent.api_deps` — what
  the routes share
"""

from __future__ import annotations

from fastapi import APIRouter

from services.consent import api_audit, api_consents, api_decisions, api_fhir
from services.consent.api_deps import ConsentApi
from services.consent.api_fhir import VERSIONS

__all__ = ["ROUTERS", "VERSIONS", "ConsentApi"]

# in this order (the order the routes are matched and listed in the CapabilityStatement)
ROUTERS: tuple[APIRouter, ...] = (
    api_consents.router,
    api_decisions.router,
    api_audit.router,
    api_fhir.router,
)
