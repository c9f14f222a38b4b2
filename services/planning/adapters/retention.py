"""What planning prunes (shared/retention.py runs it): intake messages whose effects are complete, old
inbox rows and published outbox rows.

Never pruned here: stays, SIP cases and plan versions (the care record, kept by the rules for care
documentation, not by a message retention), and ``message_views`` (operators' views of raw messages
and patient searches: an access log, kept like the AuditEvents it mirrors).

An intake message goes with its whole lineage (the original and its replays), and only when
- the original was received before the cutoff and so were all its replays;
- the lineage's effect is complete: one of its messages ``effected``, or ``accepted`` and handled
  (its effect written back, or it carried no event); none of them still ``accepted`` and unhandled;
- which keeps every ``refused`` or ``dead-lettered`` message whose lineage never got an effect: it is
  the operators' work (replay after a fix), and its replay later prunes the lineage.

Deleting a lineage as one keeps a replay's guard true: a message whose lineage has an effect is never
replayed, and no effected replay is pruned while its dead-lettered original stays replayable.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.retention import Keys, Kind, inbox_kind, outbox_kind


def _complete(t: Any) -> sa.ColumnElement[bool]:
    return sa.or_(
        t.c.status == "effected",
        sa.and_(t.c.status == "accepted", sa.or_(t.c.effect.is_not(None), t.c.events == "[]")),
    )


def _unhandled(t: Any) -> sa.ColumnElement[bool]:
    return sa.and_(t.c.status == "accepted", t.c.effect.is_(None), t.c.events != "[]")


def intake_messages_kind(t: sa.Table, days: int) -> Kind:
    """Intake messages (raw content, acknowledgement, events) older than ``days`` with complete effects."""
    replay = t.alias("replay")

    def candidates(cutoff: Any) -> sa.Select[Any]:
        # The lineage of each candidate is checked through its own replays (a correlated EXISTS on
        # replay_of, an index): a batch reads its candidates and their replays. An IN over "all
        # complete replays" / "all young or unhandled replays" was answered on SQLite through the status
        # and received indexes, i.e. every effected message (or every message younger than the
        # cutoff) once per batch: 137 ms a batch at 300,000 messages. The redundant "replay_of IS NOT
        # NULL" is for PostgreSQL, which may read the few replays once (hashed) instead of per
        # candidate: without it that read is the whole table.
        def replay_where(*where: Any) -> sa.Exists:
            return sa.exists().where(replay.c.replay_of.is_not(None), replay.c.replay_of == t.c.id, *where)

        return (
            sa.select(t.c.id)
            .where(
                t.c.replay_of.is_(None),
                t.c.received_at < cutoff,
                sa.not_(_unhandled(t)),
                sa.or_(_complete(t), replay_where(_complete(replay))),
                sa.not_(replay_where(sa.or_(replay.c.received_at >= cutoff, _unhandled(replay)))),
            )
            .order_by(t.c.received_at)
        )

    async def apply(conn: AsyncConnection, keys: Keys) -> int:
        ids = [k[0] for k in keys]
        result = await conn.execute(t.delete().where(sa.or_(t.c.id.in_(ids), t.c.replay_of.in_(ids))))
        return int(result.rowcount or 0)

    return Kind("intake_messages", days, candidates, apply)


def planning_kinds(intake: sa.Table, inbox: sa.Table, outbox: sa.Table, settings: Any) -> list[Kind]:
    return [
        intake_messages_kind(intake, settings.retention_messages_days),
        inbox_kind(inbox, settings.retention_inbox_days),
        outbox_kind(outbox, settings.retention_outbox_days),
    ]
