"""An aiosqlite-compatible SQLite connection that runs statements on the event loop's own thread.

SQLAlchemy's ``sqlite+aiosqlite`` dialect talks to the database through aiosqlite, which hands every
call — open a cursor, execute, fetch, close — to a worker thread and wakes the event loop when it is
done: three to four thread round trips per statement, about 200 µs of CPU each time, while SQLite
itself needs a few microseconds for the statements a service runs. This class gives the dialect the
same asynchronous interface (through ``create_async_engine(..., async_creator=...)``) but calls
:mod:`sqlite3` directly. Same library, same SQL, same transactions and pragmas: nothing about
durability or isolation changes, only the thread the statements run on.

Blocking the event loop is safe only because a statement never waits for another connection:

- the engine keeps **one** connection per process (``shared.persistence.make_engine``), so no two
  transactions of this process compete for SQLite's write lock;
- every transaction starts with ``BEGIN IMMEDIATE`` (the write lock up front). That statement is
  tried at once with a busy timeout of 0; only when another *process* on the same file holds the
  lock does it wait — in a worker thread, with the configured busy timeout, so the loop runs on;
- any other statement that finds the database locked fails at once (busy timeout 0) instead of
  blocking the loop: the transaction rolls back and the message is retried, as for any transient
  database error.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, cast

from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_


def _is_begin(sql: str) -> bool:
    return sql[:5].upper() == "BEGIN"


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_BUSY if code is not None else "locked" in str(exc)


class _Immediate:
    """Stands in for aiosqlite's request queue (SQLAlchemy sets ``isolation_level`` through it)."""

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:  # handed to the waiting caller, as aiosqlite does
            if future is not None and not future.done():
                future.set_exception(exc)
        else:
            if future is not None and not future.done():
                future.set_result(result)


class InlineCursor:
    __slots__ = ("_cursor", "_owner")

    def __init__(self, owner: InlineSqliteConnection) -> None:
        self._owner = owner
        self._cursor = owner._conn.cursor()

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        await self._owner._settle()
        if _is_begin(sql):
            await self._owner._begin(sql)
        else:
            self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> InlineCursor:
        await self._owner._settle()
        self._cursor.executemany(sql, seq_of_parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class InlineSqliteConnection:
    """The part of ``aiosqlite.Connection`` that SQLAlchemy's aiosqlite dialect uses."""

    def __init__(self, conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn  # the dialect checks it before commit
        self._tx = _Immediate()
        self._busy_timeout_ms = busy_timeout_ms
        self._waiting: asyncio.Future[None] | None = None  # a BEGIN waiting in a worker thread

    @classmethod
    async def connect(cls, path: str, *, busy_timeout_ms: int = 30000) -> InlineSqliteConnection:
        # check_same_thread=False: only a BEGIN that must wait for another process runs in a
        # worker thread, and nothing else touches the connection until it is back
        conn = sqlite3.connect(path, timeout=0, check_same_thread=False)
        return cls(conn, busy_timeout_ms)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._conn.isolation_level = cast("Literal['DEFERRED', 'EXCLUSIVE', 'IMMEDIATE'] | None", value)

    def cursor(self) -> InlineCursor:
        return InlineCursor(self)

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        cursor = InlineCursor(self)
        return await cursor.execute(sql, parameters)

    async def _settle(self) -> None:
        """Wait for a BEGIN still running in a worker thread (its caller was cancelled)."""
        if self._waiting is not None and not self._waiting.done():
            try:
                await asyncio.shield(self._waiting)
            except Exception:
                pass
        self._waiting = None

    def try_begin(self, sql: str) -> bool:
        """Start the transaction at once, without SQLAlchemy's statement machinery around it (a
        third of an empty transaction's CPU). False when it cannot without waiting — another
        process holds the write lock, or a BEGIN of a cancelled caller still runs in a thread —
        and the caller issues the statement the ordinary way, which waits off the loop."""
        if self._waiting is not None:
            return False
        try:
            self._conn.execute(sql)  # busy timeout 0: fails at once if another process writes
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return False
            raise
        return True

    async def _begin(self, sql: str) -> None:
        try:
            self._conn.execute(sql)  # busy timeout 0: fails at once if another process writes
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        # another process holds the write lock: wait for it off the loop, as long as configured
        self._waiting = asyncio.ensure_future(asyncio.to_thread(self._begin_waiting, sql))
        await asyncio.shield(self._waiting)

    def _begin_waiting(self, sql: str) -> None:
        self._conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        try:
            self._conn.execute(sql)
        finally:
            self._conn.execute("PRAGMA busy_timeout=0")

    async def commit(self) -> None:
        await self._settle()
        self._conn.commit()

    async def rollback(self) -> None:
        await self._settle()
        self._conn.rollback()

    async def close(self) -> None:
        await self._settle()
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)


# ---- SQLAlchemy's adapter, without the greenlet hop where nothing waits -----------------------------
#
# SQLAlchemy's asyncio layer runs the synchronous engine in a greenlet and hands every driver call
# (open a cursor, execute, close it, commit) back to the event loop's greenlet as a coroutine
# (``await_``): two greenlet switches and a coroutine per call, three calls per statement. The
# statements of this connection run on the loop's thread anyway, so the adapter below opens and
# closes cursors, commits and rolls back directly — the same sqlite3 calls in the same order. A
# statement itself still makes its one trip (SQLAlchemy insists that an execution awaits), and so
# does a commit or rollback while a BEGIN of a cancelled caller still runs in a worker thread.


class _DirectCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor  # InlineCursor.__aenter__ returns the cursor itself

    def close(self) -> None:
        self._rows.clear()
        if self._cursor is None or bool(self._soft_closed_memoized):
            return
        self._cursor._cursor.close()  # type: ignore[attr-defined]


class _DirectConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    _cursor_cls = _DirectCursor

    def commit(self) -> None:
        self._end("commit")

    def rollback(self) -> None:
        self._end("rollback")

    def _end(self, how: str) -> None:
        inline: InlineSqliteConnection = self._connection  # type: ignore[assignment]
        if inline._waiting is not None:  # settle the BEGIN still in a thread first, the usual way
            getattr(super(), how)()
            return
        if inline._connection:
            try:
                getattr(inline._conn, how)()
            except Exception as error:
                self._handle_exception(error)


class InlineDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite dialect's DBAPI module, for :class:`InlineSqliteConnection` connections
    (``create_async_engine(..., module=InlineDbapi(), async_creator=...)``)."""

    def __init__(self) -> None:
        import aiosqlite

        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        creator_fn = kw.pop("async_creator_fn")
        return _DirectConnection(self, await_(creator_fn(*arg, **kw)))
