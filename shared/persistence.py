"""Storage helpers shared by the services: engine, transactional outbox, inbox.

Each service owns its own database (SQLite file by default, PostgreSQL when given a URL) and its own
tables; this module only supplies the two tables every service needs and the code around them:

- **outbox** — events/commands are inserted in the same transaction as the state change that causes
  them, and a relay publishes them after commit (confirmed, persistent, mandatory), retrying until
  the broker confirms. A crash after commit loses nothing: the relay finds the row on restart.
- **inbox** — the ``message_id`` of every processed message is inserted in the same transaction as
  its effect; a redelivered or duplicated message finds its id and has no second effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shared.contracts import Contract
from shared.dependencies import BROKER, DATABASE, DependencyMonitor
from shared.foreground import priority_pool
from shared.tracing import outbox_traceparent

log = logging.getLogger("sip.outbox")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend (SQLite stores naive values)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: store aware UTC datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def sqlite_url(path: str | Path) -> str:
    return f"sqlite+aiosqlite:///{Path(path)}"


def normalise_database_url(url: str) -> str:
    """Accept the usual spellings and pick the async driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


SQLITE_BUSY_TIMEOUT_MS = 30000


def make_engine(url: str, *, sqlite_driver: str = "inline", pg_pool_size: int = 10) -> AsyncEngine:
    """The service's engine. SQLite: ``sqlite_driver`` "inline" runs statements on the event loop's
    thread (:mod:`shared.sqlite_inline`), "thread" through aiosqlite's worker thread. PostgreSQL:
    ``pg_pool_size`` connections at most (``SIP_DATABASE_POOL_SIZE``)."""
    url = normalise_database_url(url)
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[1]
        pool: dict[str, Any] = {}
        inline = False
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            # SQLite has one writer at a time, and every transaction here takes the write lock
            # (BEGIN IMMEDIATE, below). With several connections, the transactions waiting for it
            # sleep in SQLite's busy handler (1, 2, 5 … 100 ms steps) while the lock sits free;
            # one connection makes them queue in the pool instead, woken the moment the previous
            # transaction ends: the intake's (foreground) first, then first come first served; and
            # background work waits to begin while the intake stores a message (shared.foreground).
            # Other processes on the same file (replicas) still wait on busy_timeout. The pool wait
            # is bounded like the lock wait was (30 s).
            pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 30, "poolclass": priority_pool()}
            # inline needs that one connection: a statement on the loop's thread must never wait
            # for another connection of this process (see shared.sqlite_inline)
            inline = sqlite_driver == "inline" and "?" not in db_path and not db_path.startswith("file:")
        if inline:
            from shared.sqlite_inline import InlineDbapi, InlineSqliteConnection

            engine = create_async_engine(
                url,
                module=InlineDbapi(),
                async_creator=lambda: InlineSqliteConnection.connect(
                    db_path, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS
                ),
                **pool,
            )
        else:
            engine = create_async_engine(url, connect_args={"timeout": 30}, **pool)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # The sqlite3 driver only sends BEGIN before the first write, so a SAVEPOINT (the
            # inbox claim) would open — and its RELEASE commit — a transaction of its own,
            # separating the inbox mark from the effect. Take transaction control ourselves.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # inline: 0 — only BEGIN IMMEDIATE waits for another process, off the loop
            cur.execute(f"PRAGMA busy_timeout={0 if inline else SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock up front: concurrent writers (replicas) wait on
            # busy_timeout instead of failing when a read snapshot cannot be upgraded.
            if inline and conn.connection.driver_connection.try_begin("BEGIN IMMEDIATE"):
                return
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        count_statements(engine, url)
        return engine
    # PostgreSQL. No ``pool_pre_ping``: it costs a round trip (and a wake-up of the server's backend)
    # on every checkout — a fifth of all round trips of a consumed message. A connection that died
    # (the server restarted) fails its first statement instead, flagged as a disconnect: SQLAlchemy
    # drops every pooled connection of before the failure, the dependency monitor reports the
    # database unavailable and the message is held and redelivered, as in any outage.
    # The pool is a fixed set of connections, opened as first needed and kept: a checkout when all
    # are in use waits for one to come back (foreground first), it never opens a connection beyond
    # them. A consumer runs up to its prefetch of messages at once, so with an overflow allowance
    # every burst opened server processes and closed them on return — a fork, an authentication and
    # a cold catalogue cache each time: at saturation planning opened 108 of them for 300
    # discharges, and PostgreSQL spent 22 ms of CPU per discharge instead of 15 (benchmarks.e2e,
    # README "Connections on PostgreSQL"). Nothing takes a second connection while holding one
    # (on SQLite the whole service runs on one), so waiting cannot deadlock.
    # Foreground first (shared.foreground): while the intake stores a message, background work waits
    # to begin its next transaction, and a free connection goes to the intake first.
    engine = create_async_engine(url, pool_size=pg_pool_size, max_overflow=0, poolclass=priority_pool())
    count_statements(engine, url)
    return engine


#: benchmark/debug mode: a directory where each engine writes its statement counts (see below)
SQL_STATS_ENV = "SIP_SQL_STATS_DIR"


def sqlite_directory(engine: AsyncEngine) -> Path | None:
    """The directory of ``engine``'s SQLite file, or None (PostgreSQL, or SQLite in memory)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database).resolve().parent


PROBE_BYTES = 64 * 1024


def check_disk_room(directory: Path, nbytes: int = PROBE_BYTES) -> None:
    """Write, sync and remove ``nbytes`` in ``directory``: raises OSError (ENOSPC, EROFS, EIO …)
    when the file system there cannot take a write now. A SQLite transaction that only reads (or
    writes into WAL pages the file already has) succeeds on a full disk, so it cannot tell."""
    probe = directory / f".sip-disk-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            written = os.write(fd, b"\0" * nbytes)
            if written < nbytes:
                raise OSError(errno.ENOSPC, "No space left on device (a short write)")
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def count_statements(engine: AsyncEngine, url: str) -> None:
    """With ``SIP_SQL_STATS_DIR`` set (benchmarks, debugging — never in production), count what this
    engine sends: statements (one per round trip: an ``executemany`` is one), transactions begun,
    commits, rollbacks, pool checkouts and new connections, and each
    statement's count by its text. A thread rewrites ``<dir>/<database>-<pid>.json`` every 0.5 s, so
    a benchmark reads the counts at a phase's start and end like CPU time."""
    directory = os.environ.get(SQL_STATS_ENV)
    if not directory:
        return
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", url.rsplit("/", 1)[-1].split("?", 1)[0])
    path = Path(directory) / f"{name}-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {"database": name, "statements": 0, "begin": 0, "commit": 0, "rollback": 0,
                             "checkout": 0, "connect": 0, "by_text": {}}  # fmt: skip
    by_text: dict[str, int] = stats["by_text"]

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _statement(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        stats["statements"] += 1
        key = " ".join(statement.split())[:120]
        by_text[key] = by_text.get(key, 0) + 1

    for name_ in ("begin", "commit", "rollback"):

        def _count(*_args: Any, _name: str = name_) -> None:
            stats[_name] += 1

        event.listen(engine.sync_engine, name_, _count)

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _checkout(*_args: Any) -> None:
        stats["checkout"] += 1

    @event.listens_for(engine.sync_engine.pool, "connect")
    def _connect(*_args: Any) -> None:
        stats["connect"] += 1

    def _writer() -> None:
        import time

        while True:
            time.sleep(0.5)
            with contextlib.suppress(Exception):
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({**stats, "by_text": dict(by_text)}))
                tmp.replace(path)

    threading.Thread(target=_writer, name="sql-stats", daemon=True).start()


def outbox_table(metadata: sa.MetaData) -> sa.Table:
    if "outbox" in metadata.tables:  # one metadata may serve several app instances
        return metadata.tables["outbox"]
    return sa.Table(
        "outbox",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(36), nullable=False, unique=True),
        sa.Column("exchange", sa.String(128), nullable=False),
        sa.Column("routing_key", sa.String(128), nullable=False),
        sa.Column("correlation_id", sa.String(128)),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("published_at", UTCDateTime),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("last_error", sa.Text),
        sa.Column("claimed_by", sa.String(32)),
        sa.Column("claimed_until", UTCDateTime),
        # W3C traceparent of the transaction that wrote the row; sent as an AMQP header
        sa.Column("traceparent", sa.String(64)),
        sa.Index("ix_outbox_pending", "published_at", "id"),
    )


def upgrade_outbox(sync_conn: sa.Connection, outbox: sa.Table) -> None:
    """Add columns newer than an existing outbox table (additive; run after ``create_all``)."""
    have = {c["name"] for c in sa.inspect(sync_conn).get_columns(outbox.name)}
    for column in ("traceparent",):
        if column not in have:
            col = outbox.c[column]
            type_sql = col.type.compile(dialect=sync_conn.dialect)
            # IF NOT EXISTS: replicas starting together on PostgreSQL may race to add it
            guard = "IF NOT EXISTS " if sync_conn.dialect.name == "postgresql" else ""
            sync_conn.execute(sa.text(f"ALTER TABLE {outbox.name} ADD COLUMN {guard}{column} {type_sql}"))
            log.info("outbox table upgraded", extra={"column": column})


def inbox_table(metadata: sa.MetaData) -> sa.Table:
    if "inbox" in metadata.tables:
        return metadata.tables["inbox"]
    return sa.Table(
        "inbox",
        metadata,
        sa.Column("consumer", sa.String(128), primary_key=True),
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("processed_at", UTCDateTime, nullable=False),
        # retention deletes the oldest rows (shared/retention.py: inbox_kind)
        sa.Index("ix_inbox_processed", "processed_at"),
    )


def upgrade_inbox(sync_conn: sa.Connection, inbox: sa.Table) -> None:
    """SQLite: the inbox's indexes newer than an existing table (idempotent; run after ``create_all``)."""
    for index in inbox.indexes:
        index.create(sync_conn, checkfirst=True)


def _insert(table: sa.Table) -> sa.Insert:
    """``table.insert()``, built once: execute it with a dict of values."""
    stmt = table.info.get("sip_insert")
    if stmt is None:
        stmt = table.info["sip_insert"] = table.insert()
    return stmt


#: the ``exchange`` of an outbox row that is the service's own work, not a publication: the relay
#: hands it to :attr:`OutboxRelay.deliver_locally` in-process (:mod:`shared.local_delivery`)
LOCAL_EXCHANGE = "(local)"


async def enqueue(conn: AsyncConnection, outbox: sa.Table, message: Contract, *, local: bool = False) -> None:
    """Store ``message`` for publishing; call inside the transaction of the state change.

    ``local``: the message is for this service's own handler, not for the broker — the relay hands
    it over in-process after the commit (same ordering, claims, retries and crash rules as a
    publication; the handler's inbox makes a second hand-over after a crash harmless).

    The row keeps the ``traceparent`` of a span made now (``shared.tracing``), so whoever consumes
    the message continues this transaction's trace although the relay publishes it later.
    """
    message_id = str(message.message_id)
    traceparent = outbox_traceparent(
        exchange=message.exchange,
        routing_key=message.routing_key,
        message_id=message_id,
        correlation_id=message.correlation_id,
    )
    # the statement is built once per table and the values bound at execution: building
    # ``insert().values(...)`` anew for every message costs several times the insert itself
    await conn.execute(
        _insert(outbox),
        {
            "message_id": message_id,
            "exchange": LOCAL_EXCHANGE if local else message.exchange,
            "routing_key": message.routing_key,
            "correlation_id": message.correlation_id,
            "body": message.model_dump_json(),
            "created_at": utcnow(),
            "attempts": 0,
            "traceparent": traceparent,
        },
    )


async def claim_inbox(conn: AsyncConnection, inbox: sa.Table, consumer: str, message_id: str) -> bool:
    """Record ``message_id`` as processed by ``consumer``. False if it already was.

    Runs in the effect's transaction: one ``INSERT … ON CONFLICT DO NOTHING`` (SQLite, PostgreSQL)
    whose row count says whether this call recorded it. On PostgreSQL a concurrent replica
    processing the same id blocks on the key until the first commits, then sees the conflict (or
    inserts, if the first rolled back) — so two replicas never both take effect.
    """
    values = {"consumer": consumer, "message_id": message_id, "processed_at": utcnow()}
    inserted = await insert_once(conn, inbox, values)
    if inserted is not None:
        return inserted
    exists = await conn.scalar(
        sa.select(sa.literal(1))
        .select_from(inbox)
        .where(inbox.c.consumer == consumer, inbox.c.message_id == message_id)
    )
    if exists:
        return False
    try:
        async with conn.begin_nested():  # keeps the outer transaction usable on conflict
            await conn.execute(inbox.insert().values(**values))
    except IntegrityError:
        return False
    return True


async def insert_once(conn: AsyncConnection, table: sa.Table, values: dict[str, Any]) -> bool | None:
    """Insert a row unless its key is there already, in one ``INSERT … ON CONFLICT DO NOTHING``
    (built once per table and dialect): True when this call inserted it, False when the key was
    there. None on a database without that statement — the caller checks and inserts itself."""
    dialect = conn.dialect.name
    build = _INSERT_IGNORE.get(dialect)
    if build is None:
        return None
    key = (table, dialect)
    insert = _INSERT_IGNORE_CACHE.get(key)
    if insert is None:
        insert = _INSERT_IGNORE_CACHE[key] = build(table).on_conflict_do_nothing()
    return bool((await conn.execute(insert, values)).rowcount == 1)


_INSERT_IGNORE: dict[str, Callable[[sa.Table], Any]] = {"sqlite": sqlite_insert, "postgresql": pg_insert}
_INSERT_IGNORE_CACHE: dict[tuple[sa.Table, str], Any] = {}


Publish = Callable[..., Awaitable[None]]


class LocalRow(Protocol):
    """An outbox row of the service's own work, as the relay hands it to ``deliver_locally``."""

    message_id: str
    routing_key: str
    correlation_id: str | None
    body: str
    traceparent: str | None
    #: failed hand-overs so far (a database or broker outage is not counted)
    attempts: int


DeliverLocally = Callable[[LocalRow], Awaitable[None]]


class OutboxRelay:
    """Publishes committed outbox rows; wakes on demand and polls as a safety net."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: sa.Table,
        publish: Publish,
        *,
        poll_interval: float = 1.0,
        batch: int = 200,
        claim_seconds: float = 30.0,
        dependencies: DependencyMonitor | None = None,
    ) -> None:
        self._claim_seconds = claim_seconds
        #: a database or broker outage is reported here (one log line per change, readiness) and
        #: waited out with its backoff instead of a traceback per pass
        self.dependencies = dependencies
        self._engine = engine
        self._outbox = outbox
        self._publish = publish
        self._poll = poll_interval
        self._batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sql: _RelayStatements | None = None
        self.published = 0
        #: the service's handler for its own rows (:data:`LOCAL_EXCHANGE`); it settles a bad message
        #: itself (dead letter) and raises only to have the row kept and tried again
        self.deliver_locally: DeliverLocally | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            # a final drain so nothing committed waits for the next start
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=10)
            self._task = None

    async def _run(self) -> None:
        while True:
            # cleared before the pass, not after it: a wake() while the pass runs (a row committed
            # after its SELECT) must start another pass at once, not wait for the poll interval
            self._wake.clear()
            try:
                more = await self.drain_once()
            except Exception as exc:  # the relay must outlive broker/database hiccups
                more = False
                dependency = self.dependencies.report(exc) if self.dependencies else None
                if dependency is None:
                    log.exception("outbox relay pass failed; will retry")
                    await asyncio.sleep(self._poll)
                elif not self._stopping:
                    await self._wait_for(dependency)
                else:
                    return  # stopping with the dependency away: the rows wait for the next start
            if self._stopping and not more:
                return
            if more:
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)

    async def drain_once(self) -> bool:
        """Publish one batch; True if a full batch was published (there may be more).

        Rows are claimed — picked and marked with this pass's token in ONE statement (``UPDATE …
        WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING …`` on PostgreSQL, under the write
        lock on SQLite) — published outside any transaction, then marked published. Several
        replicas share the work; a claim that outlives a crashed relay expires and is taken again
        (the consumers' inbox absorbs the rare second publish). The statements are built once.

        A row of the service's own work (:data:`LOCAL_EXCHANGE`) is handed to
        :attr:`deliver_locally` in-process, in the same order, instead of being published; its
        handler's inbox absorbs a second hand-over the same way.
        """
        sql = self._statements()
        token = uuid.uuid4().hex
        now = utcnow()
        async with self._engine.begin() as conn:
            claimed = (
                await conn.execute(
                    sql.claim,
                    {
                        "relay_now": now,
                        "relay_batch": self._batch,
                        "relay_token": token,
                        "relay_until": now + timedelta(seconds=self._claim_seconds),
                    },
                )
            ).all()
        # the claim alone does not say the database is back: on a full disk an UPDATE that matches
        # nothing (or fits the WAL) commits while every real write fails, and calling it "up" here
        # flapped /readyz to 200 mid-outage. The database is up once this pass has stored its work.
        if not claimed:
            return False
        rows = sorted(claimed, key=lambda r: r.id)  # RETURNING has no order: publish in outbox order
        done: list[int] = []
        error: str | None = None
        unavailable: str | None = None
        failed: int | None = None  # the row that failed, when it was the message's fault
        for row in rows:
            local = row.exchange == LOCAL_EXCHANGE
            try:
                if local:
                    if self.deliver_locally is None:
                        raise RuntimeError("no local handler for this outbox row")
                    await self.deliver_locally(row)
                else:
                    extra = {"traceparent": row.traceparent} if row.traceparent else {}
                    await self._publish(
                        body=row.body.encode(),
                        exchange=row.exchange,
                        routing_key=row.routing_key,
                        message_id=row.message_id,
                        correlation_id=row.correlation_id,
                        **extra,
                    )
            except Exception as exc:
                error = type(exc).__name__
                unavailable = self.dependencies.report(exc) if self.dependencies else None
                if unavailable is None:
                    failed = row.id  # a sick dependency is not the message's fault: not counted
                    log.warning(
                        f"outbox {'hand-over' if local else 'publish'} failed; kept for retry",
                        extra={
                            "message_id": row.message_id,
                            "routing_key": row.routing_key,
                            "error_type": error,
                        },
                    )
                break  # keep order; try again on the next pass
            done.append(row.id)
            if not local and self.dependencies is not None and not self.dependencies.is_up(BROKER):
                self.dependencies.up(BROKER)
        async with self._engine.begin() as conn:
            if done:
                await conn.execute(sql.published, {"relay_ids": done, "relay_now": utcnow()})
                self.published += len(done)
            published = set(done)
            rest = [r.id for r in rows if r.id not in published]
            if rest:
                await conn.execute(sql.release, {"relay_ids": rest, "relay_error": error})
            if failed is not None:
                await conn.execute(sql.attempted, {"relay_ids": [failed]})
        if done and unavailable != DATABASE and self.dependencies is not None:
            self.dependencies.up(DATABASE)  # this pass stored its work
        if error:
            if self.dependencies is not None and not self.dependencies.is_up(BROKER):
                await self._wait_for(BROKER)
            else:
                await asyncio.sleep(self._poll)
            return False
        return len(rows) == self._batch

    async def _wait_for(self, dependency: str) -> None:
        """The dependency's backoff, cut short by a stop or by the dependency coming back."""
        assert self.dependencies is not None
        waiting = asyncio.ensure_future(self.dependencies.wait(dependency))
        stopping = asyncio.ensure_future(self._stopped())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, stopping):
                task.cancel()

    async def _stopped(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()

    def _statements(self) -> _RelayStatements:
        if self._sql is None:
            self._sql = _RelayStatements.build(self._outbox, self._engine.dialect.name)
        return self._sql


@dataclass(frozen=True)
class _RelayStatements:
    """The relay's statements, built once per table and dialect (building ``select``/``update``
    with an ``IN`` list anew on every pass cost the relay more CPU than the database work)."""

    claim: Any
    published: Any
    release: Any
    #: one more failed attempt of the row whose publish or hand-over failed (not of the untried rest)
    attempted: Any

    @classmethod
    def build(cls, o: sa.Table, dialect: str) -> _RelayStatements:
        due = (
            sa.select(o.c.id)
            .where(o.c.published_at.is_(None))
            .where(
                sa.or_(
                    o.c.claimed_until.is_(None),
                    o.c.claimed_until < sa.bindparam("relay_now", type_=o.c.claimed_until.type),
                )
            )
            .order_by(o.c.id)
            .limit(sa.bindparam("relay_batch", type_=sa.Integer))
        )
        if dialect == "postgresql":  # replicas: each takes rows no other pass holds
            due = due.with_for_update(skip_locked=True)
        claim = (
            o.update()
            .where(o.c.id.in_(due.scalar_subquery()))
            .values(
                claimed_by=sa.bindparam("relay_token", type_=o.c.claimed_by.type),
                claimed_until=sa.bindparam("relay_until", type_=o.c.claimed_until.type),
            )
        ).returning(*(o.c[n] for n in ("id", "message_id", "exchange", "routing_key", "correlation_id",
                                       "body", "traceparent", "attempts")))  # fmt: skip
        ids = sa.bindparam("relay_ids", expanding=True, type_=o.c.id.type)
        published = (
            o.update()
            .where(o.c.id.in_(ids))
            .values(published_at=sa.bindparam("relay_now", type_=o.c.published_at.type))
        )
        release = (
            o.update()
            .where(o.c.id.in_(ids))
            .values(
                claimed_by=None,
                claimed_until=None,
                last_error=sa.bindparam("relay_error", type_=o.c.last_error.type),
            )
        )
        attempted = o.update().where(o.c.id.in_(ids)).values(attempts=o.c.attempts + 1)
        return cls(claim, published, release, attempted)


@contextlib.asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.begin() as conn:
        yield conn
