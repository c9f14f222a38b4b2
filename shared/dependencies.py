"""A sick dependency is not a bad message: telling them apart, and riding out the outage.

A message that can never succeed belongs in a dead-letter queue. A healthy message that met a
database being restarted, a full disk, a broker or mail server that is away does not: it must wait
until the dependency is back and then take effect, without an operator. This module is the one place
that makes that call for every service:

- :func:`unavailable_dependency` classifies an exception: ``"database"``, ``"broker"`` or ``"smtp"``
  when it says that dependency cannot be used right now (connection refused or lost, server shutting
  down, disk full, read-only file system, lock wait timed out …), ``None`` when it is about the work
  itself (a bug, a constraint, a bad value) and the usual retry budget applies.
- :class:`DependencyMonitor` keeps one state per dependency: up, or down since when and why. Going
  down logs one WARNING, coming back one INFO (not one line per message); the gauge
  ``sip_dependency_up{dependency}`` follows it; ``/readyz`` answers 503 with the reason while any is
  down. Whoever met the outage waits :meth:`DependencyMonitor.wait` — a backoff that doubles from
  ``backoff_initial`` up to ``backoff_max`` seconds (``SIP_DEPENDENCY_BACKOFF_MAX_SECONDS``), cut short
  the moment anything sees the dependency work again (a message that succeeds, or the monitor's own
  probe, which runs while a dependency with a probe is down).

The consume middleware (:func:`shared.messaging.dead_letter_middleware`) holds a delivery that met an
unavailable dependency — unacknowledged, so the broker sends no more than the prefetch, and its retry
budget untouched — and runs it again when the monitor says the dependency may be back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("sip.dependencies")

DATABASE = "database"
BROKER = "broker"
SMTP = "smtp"
DEPENDENCIES = (DATABASE, BROKER, SMTP)


class DependencyUnavailable(Exception):
    """Raised (or recognised) when ``dependency`` cannot be used now; nothing is wrong with the work."""

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency} unavailable: {reason}")
        self.dependency = dependency
        self.reason = reason


# Text of driver errors that mean "the database cannot be used now" (lower case). SQLite's come from
# sqlite3.OperationalError; PostgreSQL's from asyncpg / psycopg, usually wrapped by SQLAlchemy.
_DATABASE_TEXTS = (
    # SQLite: the file system or the lock
    "disk i/o error",
    "database or disk is full",
    "attempt to write a readonly database",
    "database is locked",
    "unable to open database file",
    # PostgreSQL: the server is not there, going away or refusing connections for now
    "connection refused",
    "could not connect",
    "connection was closed",
    "connection is closed",
    "connection reset",
    "server closed the connection",
    "terminating connection due to administrator command",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "cannot connect now",
    "connection does not exist",
    "unexpected connection_lost",
    "connection_lost",
    "too many connections",
    "no space left on device",
    "read-only file system",
    "could not extend file",
    "cannot execute",  # … in a read-only transaction (a standby after failover)
)
# SQLSTATE classes/codes that mean the same (asyncpg/psycopg ``sqlstate``/``pgcode``)
_DATABASE_SQLSTATES = ("08", "57P", "53", "25006", "55P03")
_DEPENDENCY_ERRNOS = {
    errno.ENOSPC,
    errno.EROFS,
    errno.EIO,
    errno.EDQUOT,
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EPIPE,
}
_MODULE_DEPENDENCY = (
    ("sqlalchemy", DATABASE),
    ("asyncpg", DATABASE),
    ("psycopg", DATABASE),
    ("sqlite", DATABASE),
    ("aiosqlite", DATABASE),
    ("shared.sqlite_inline", DATABASE),
    ("aiormq", BROKER),
    ("aio_pika", BROKER),
    ("pamqp", BROKER),
    ("faststream", BROKER),
    ("aiosmtplib", SMTP),
)


def _chain(exc: BaseException, limit: int = 8) -> list[BaseException]:
    """``exc``, what it wraps (SQLAlchemy's ``orig``) and its causes, without repeats."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(out) < limit:
        cur = todo.pop(0)
        if cur is None or any(cur is seen for seen in out):
            continue
        out.append(cur)
        orig = getattr(cur, "orig", None)
        todo.extend([orig if isinstance(orig, BaseException) else None, cur.__cause__, cur.__context__])
    return out


def _module_dependency(exc: BaseException) -> str | None:
    """The dependency an exception's class or traceback belongs to, by module name."""
    names = [type(exc).__module__ or ""]
    tb = exc.__traceback__
    if tb is not None:
        names.extend(frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb))
    for name in reversed(names):  # the innermost frame says best who raised it
        path = name.replace("/", ".")
        for module, dependency in _MODULE_DEPENDENCY:
            if f".{module}." in f".{path}" or path.startswith(f"{module}."):
                return dependency
    return None


def _sqlstate(exc: BaseException) -> str:
    for attr in ("sqlstate", "pgcode"):
        value = getattr(exc, attr, None)
        if isinstance(value, str):
            return value
    return ""


def _is_sqlalchemy_unavailable(exc: BaseException) -> bool:
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency of every service
        return False
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    # the pool waited its pool_timeout for a connection: every connection is stuck on the database
    return isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError)


def _is_broker_error(exc: BaseException) -> bool:
    try:
        import aiormq.exceptions
    except ImportError:  # pragma: no cover
        return False
    return isinstance(
        exc,
        aiormq.exceptions.AMQPConnectionError
        | aiormq.exceptions.ConnectionClosed
        | aiormq.exceptions.ChannelInvalidStateError,
    )


def _is_smtp_unavailable(exc: BaseException) -> bool:
    try:
        import aiosmtplib
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected
                      | aiosmtplib.SMTPConnectTimeoutError)  # fmt: skip


def unavailable_dependency(exc: BaseException) -> str | None:
    """``"database"``, ``"broker"`` or ``"smtp"`` when ``exc`` means that dependency is unavailable
    now; ``None`` when it is about the work itself (then the message's retry budget applies)."""
    found = _classify(exc)
    return found[0] if found else None


def describe_unavailable(exc: BaseException) -> tuple[str, str] | None:
    """``(dependency, reason)`` like :func:`unavailable_dependency`; the reason names the error class
    and the driver's words for it (never values of the work: driver errors of this kind carry none)."""
    return _classify(exc)


def _classify(exc: BaseException) -> tuple[str, str] | None:
    chain = _chain(exc)
    for cur in chain:
        if isinstance(cur, DependencyUnavailable):
            return cur.dependency, cur.reason
    for cur in chain:
        dependency = _classify_one(cur)
        if dependency is not None:
            return dependency, _reason(cur)
    return None


def _classify_one(cur: BaseException) -> str | None:
    if _is_smtp_unavailable(cur):
        return SMTP
    if _is_broker_error(cur):
        return BROKER
    if _is_sqlalchemy_unavailable(cur):
        return DATABASE
    text = str(cur).lower()
    state = _sqlstate(cur)
    module = _module_dependency(cur)
    if module == DATABASE or type(cur).__module__.startswith(("sqlite3", "asyncpg", "psycopg")):
        if any(t in text for t in _DATABASE_TEXTS) or state.startswith(_DATABASE_SQLSTATES):
            return DATABASE
        if _is_asyncpg_connection_error(cur):
            return DATABASE
    if isinstance(cur, OSError) and (cur.errno in _DEPENDENCY_ERRNOS or isinstance(cur, ConnectionError)):
        if cur.errno in (errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT):
            return DATABASE  # the data directory
        return module or DATABASE
    if isinstance(cur, TimeoutError) and module is not None:
        return module
    return None


def _is_asyncpg_connection_error(exc: BaseException) -> bool:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover
        return False
    return isinstance(
        exc,
        asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.InterfaceError,
    )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # SQLAlchemy appends the statement and its parameters: keep only the driver's first line
    text = text.split("[SQL:", 1)[0].split("(Background on this error", 1)[0].strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# ---- the monitor -----------------------------------------------------------------------------------
Probe = Callable[[], Awaitable[object]]


@dataclass
class _State:
    up: bool = True
    reason: str = ""
    since: float = 0.0
    failures: int = 0
    counted_at: float = 0.0  # when ``failures`` last grew
    back: asyncio.Event | None = None


@dataclass
class DependencyMonitor:
    """Up/down per dependency, with backoff, readiness, a gauge and one log line per change."""

    service: str
    backoff_initial: float = 0.5
    backoff_max: float = 120.0
    on_change: Callable[[str, bool], None] | None = None
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)
    _probes: dict[str, Probe] = field(default_factory=dict)
    _probe_task: asyncio.Task[None] | None = None

    def _state(self, dependency: str) -> _State:
        state = self._states.get(dependency)
        if state is None:
            state = self._states[dependency] = _State()
            if self.on_change is not None:
                self.on_change(dependency, True)
        return state

    def track(self, *dependencies: str) -> None:
        """Show these dependencies (as up) from the start, before anything met them."""
        for dependency in dependencies:
            self._state(dependency)

    def add_probe(self, dependency: str, probe: Probe) -> None:
        """``probe()`` succeeds when ``dependency`` works; it is tried while the dependency is down."""
        self._probes[dependency] = probe
        self.track(dependency)

    # ---- what callers report -------------------------------------------------------------------
    def down(self, dependency: str, reason: str) -> bool:
        """``dependency`` failed; True if that is news (it was up until now)."""
        state = self._state(dependency)
        now = self.clock()
        # the backoff grows once per round of tries, not once per caller: fifty held messages
        # failing together count as one failure
        if state.up or state.failures == 0 or now - state.counted_at >= self.backoff(dependency) / 2:
            state.failures += 1
            state.counted_at = now
        if not state.up:
            return False
        state.up, state.reason, state.since = False, reason, now
        state.back = None
        log.warning(
            "dependency unavailable: holding work until it is back",
            extra={"service": self.service, "dependency": dependency, "reason": reason},
        )
        if self.on_change is not None:
            self.on_change(dependency, False)
        self._ensure_probing()
        return True

    def up(self, dependency: str) -> bool:
        """``dependency`` worked; True if it had been down."""
        state = self._state(dependency)
        if state.up:
            state.failures = 0
            return False
        seconds = round(self.clock() - state.since, 1)
        state.up, state.reason, state.failures = True, "", 0
        if state.back is not None:
            state.back.set()
        log.info(
            "dependency available again: resuming",
            extra={"service": self.service, "dependency": dependency, "down_seconds": seconds},
        )
        if self.on_change is not None:
            self.on_change(dependency, True)
        return True

    def report(self, exc: BaseException) -> str | None:
        """Classify ``exc``; when it means a dependency is unavailable, mark it down and name it."""
        found = describe_unavailable(exc)
        if found is None:
            return None
        self.down(*found)
        return found[0]

    # ---- what callers ask -----------------------------------------------------------------------
    def is_up(self, dependency: str) -> bool:
        state = self._states.get(dependency)
        return state is None or state.up

    def unavailable(self) -> dict[str, dict[str, Any]]:
        """The dependencies down now: reason and seconds since."""
        now = self.clock()
        return {
            name: {"reason": s.reason, "down_seconds": round(now - s.since, 1)}
            for name, s in sorted(self._states.items())
            if not s.up
        }

    @property
    def ready(self) -> bool:
        return all(s.up for s in self._states.values())

    def backoff(self, dependency: str) -> float:
        """Seconds to wait before trying ``dependency`` again: doubles per failure, capped."""
        failures = max(self._state(dependency).failures, 1)
        return float(min(self.backoff_initial * 2.0 ** min(failures - 1, 40), self.backoff_max))

    async def wait(self, dependency: str) -> None:
        """Sleep the current backoff, or less if ``dependency`` is seen working meanwhile."""
        state = self._state(dependency)
        if state.up:
            return
        if state.back is None:
            state.back = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.back.wait(), timeout=self.backoff(dependency))

    # ---- the probe ------------------------------------------------------------------------------
    def _ensure_probing(self) -> None:
        if not self._probes:
            return
        if self._probe_task is not None and not self._probe_task.done():
            return
        try:
            self._probe_task = asyncio.get_running_loop().create_task(
                self._probe_loop(), name=f"{self.service}-dependency-probe"
            )
        except RuntimeError:  # no running loop (a synchronous test): nothing to probe with
            self._probe_task = None

    async def _probe_loop(self) -> None:
        while True:
            down = [d for d, s in self._states.items() if not s.up and d in self._probes]
            if not down:
                return
            await asyncio.sleep(min(self.backoff(d) for d in down))
            for dependency in down:
                if self.is_up(dependency):
                    continue
                try:
                    await asyncio.wait_for(self._probes[dependency](), timeout=10)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    state = self._state(dependency)
                    state.failures += 1
                    state.counted_at = self.clock()
                    log.debug(
                        "probe failed", extra={"dependency": dependency, "error_type": type(exc).__name__}
                    )
                else:
                    self.up(dependency)

    async def close(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
