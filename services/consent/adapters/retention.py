"""What consent prunes (shared/retention.py runs it): AuditEvents older than the audit retention, old
inbox rows and published outbox rows.

AuditEvents are the access log (HSLF-FS 2016:40, 4 kap. 9 §: kept at least five years): their retention
(``retention_audit_days``) is their own, never shorter than the law's (refused at start), never tied to
a message retention, and the cutoff is never later than five calendar years ago. Consents, their
versions and the consent requests are never pruned by age: a consent record is kept.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from services.consent.adapters.store import audit_events
from shared.retention import Kind, audit_cutoff, check_audit_days, delete_by_key, inbox_kind, outbox_kind


def audit_kind(days: int) -> Kind:
    check_audit_days(days)
    t = audit_events
    return Kind(
        "audit_events",
        days,
        lambda cutoff: sa.select(t.c.id).where(t.c.recorded_at < cutoff).order_by(t.c.recorded_at),
        delete_by_key(t),
        cutoff=audit_cutoff,
    )


def consent_kinds(inbox: sa.Table, outbox: sa.Table, settings: Any) -> list[Kind]:
    return [
        audit_kind(settings.retention_audit_days),
        inbox_kind(inbox, settings.retention_inbox_days),
        outbox_kind(outbox, settings.retention_outbox_days),
    ]
