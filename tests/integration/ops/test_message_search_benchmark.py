"""The message-search benchmark (benchmarks/message_search.py) at a small size, on the run's database
(SQLite, or PostgreSQL with SIP_TEST_DATABASE=postgres): the store is generated and loaded the fast way,
every search kind the API runs answers well under a second and its query plan reads through an index
(EXPLAIN), never a full scan of the table. The full-size run (2 million messages) is in the README."""

from __future__ import annotations

import pytest

from benchmarks import message_search as bench
from tests.support.dbmode import ON_POSTGRES

pytestmark = [pytest.mark.slow, *([pytest.mark.postgres] if ON_POSTGRES else [])]
MESSAGES = 40_000


async def test_every_search_kind_uses_an_index_and_answers_under_a_second(tmp_path):
    backend = "postgres" if ON_POSTGRES else "sqlite"
    timings = await bench.run_backend(backend, MESSAGES, repeat=5, keep=tmp_path, verbose=False)
    assert {t.kind for t in timings} == set(bench.kinds(MESSAGES))
    for t in timings:
        assert t.index, f"{t.kind}: no index used\n{t.plan}"
        assert t.max_ms < 1000, (t.kind, t.max_ms)
    found = {t.kind: t.found for t in timings}
    # the searches find what is there: a full first page where many match, the one message by its ids
    assert found["newest (no filter)"] == bench.LIMIT and found["sender"] == bench.LIMIT
    assert found["control id"] == 1 and found["correlation id"] == 1
    assert found["patient (audited search)"] >= 1 and found["time window (1 h)"] >= 1


def test_the_plan_check_tells_a_full_scan_from_an_index():
    assert not bench.plan_uses_index("sqlite", "SCAN intake_messages")
    assert bench.plan_uses_index(
        "sqlite", "SEARCH intake_messages USING INDEX ix_intake_messages_sender (sender=?)"
    )
    assert bench.plan_uses_index("sqlite", "SCAN intake_messages USING INDEX ix_intake_messages_received")
    assert bench.plan_uses_index(
        "sqlite", "SCAN intake_messages", filtered=False
    )  # the newest page: rowid order
    assert not bench.plan_uses_index(
        "sqlite", "SCAN intake_messages\nUSE TEMP B-TREE FOR ORDER BY", filtered=False
    )
    assert not bench.plan_uses_index("postgresql", "Limit\n  ->  Seq Scan on intake_messages")
    assert bench.plan_uses_index(
        "postgresql", "Index Scan Backward using intake_messages_pkey on intake_messages"
    )
