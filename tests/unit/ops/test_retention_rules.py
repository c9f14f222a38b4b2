"""The retention rules that need no database (shared/retention.py): the audit cutoff is never later than
five calendar years ago, whatever the leap days; an audit retention below the law's is refused; a batch
is claimed with FOR UPDATE SKIP LOCKED on PostgreSQL only. (The pruning itself, on SQLite and
PostgreSQL: tests/integration/ops/test_retention.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from shared.persistence import inbox_table
from shared.retention import AUDIT_MINIMUM_DAYS, audit_cutoff, check_audit_days, inbox_kind


def test_the_audit_cutoff_keeps_five_calendar_years_even_with_two_leap_days():
    # 2024-02-28 .. 2029-02-28 holds 2024-02-29 and 2028-02-29: five years are 1827 days there
    now = datetime(2029, 2, 28, 12, 0, tzinfo=UTC)
    assert now - timedelta(days=AUDIT_MINIMUM_DAYS) > datetime(2024, 2, 28, 12, 0, tzinfo=UTC)
    assert audit_cutoff(now, AUDIT_MINIMUM_DAYS) == datetime(2024, 2, 28, 12, 0, tzinfo=UTC)
    # on 29 February, five years back is the 28th (that year has no 29th)
    leap = datetime(2028, 2, 29, 8, 0, tzinfo=UTC)
    assert audit_cutoff(leap, AUDIT_MINIMUM_DAYS) <= datetime(2023, 2, 28, 8, 0, tzinfo=UTC)
    # a longer retention than five years is kept as set
    assert audit_cutoff(now, 3650) == now - timedelta(days=3650)


@pytest.mark.parametrize("days", [1, 365, AUDIT_MINIMUM_DAYS - 1])
def test_an_audit_retention_shorter_than_five_years_is_refused(days):
    with pytest.raises(ValueError, match="HSLF-FS 2016:40"):
        check_audit_days(days)


@pytest.mark.parametrize("days", [0, AUDIT_MINIMUM_DAYS, 3650])
def test_five_years_or_more_or_for_ever_is_accepted(days):
    assert check_audit_days(days) == days


def test_a_batch_is_claimed_with_skip_locked_on_postgresql_only():
    kind = inbox_kind(inbox_table(sa.MetaData()), 30)
    cutoff = datetime(2026, 1, 1, tzinfo=UTC)
    pg = str(kind.statement("postgresql", cutoff, 500).compile(dialect=postgresql.dialect()))
    lite = str(kind.statement("sqlite", cutoff, 500).compile(dialect=sqlite.dialect()))
    assert "FOR UPDATE SKIP LOCKED" in pg and "LIMIT" in pg
    assert "FOR UPDATE" not in lite and "LIMIT" in lite
