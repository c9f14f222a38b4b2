"""A sick dependency is told from a bad message (shared.dependencies): the classification of real
driver exceptions, and the monitor's state machine (backoff, readiness, one log line per change)."""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3

import aiormq.exceptions
import aiosmtplib
import pytest
import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError, OperationalError

from shared.dependencies import DependencyMonitor, DependencyUnavailable, unavailable_dependency
from shared.errors import PermanentError
from shared.persistence import make_engine


def _wrapped(orig: BaseException) -> OperationalError:
    """What SQLAlchemy raises around a driver error (statement and parameters included)."""
    return OperationalError("INSERT INTO cases (x) VALUES (?)", ("190101019801",), orig)


@pytest.mark.parametrize(
    "text",
    [
        "disk I/O error",
        "database or disk is full",
        "attempt to write a readonly database",
        "database is locked",
        "unable to open database file",
    ],
)
def test_sqlite_errors_about_the_file_are_the_database(text: str):
    assert unavailable_dependency(_wrapped(sqlite3.OperationalError(text))) == "database"


@pytest.mark.parametrize(
    "text",
    [
        "connection refused",
        "server closed the connection unexpectedly",
        "terminating connection due to administrator command",
        "the database system is shutting down",
        "FATAL: the database system is starting up",
        "cannot connect now",
    ],
)
def test_postgres_connection_errors_are_the_database(text: str):
    class AsyncpgLike(Exception):  # module of the driver, as SQLAlchemy's adapter raises it
        __module__ = "asyncpg.exceptions"

    assert unavailable_dependency(_wrapped(AsyncpgLike(text))) == "database"


def test_sqlstate_of_a_postgres_error_is_enough():
    class AdminShutdown(Exception):
        __module__ = "asyncpg.exceptions"
        sqlstate = "57P01"

    class DiskFull(Exception):
        __module__ = "asyncpg.exceptions"
        sqlstate = "53100"

    assert unavailable_dependency(_wrapped(AdminShutdown("x"))) == "database"
    assert unavailable_dependency(_wrapped(DiskFull("x"))) == "database"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_file_system_errors_are_the_database(code: int):
    assert unavailable_dependency(OSError(code, "no")) == "database"


def test_broker_and_smtp_connection_errors():
    assert unavailable_dependency(aiormq.exceptions.AMQPConnectionError("gone")) == "broker"
    assert unavailable_dependency(aiormq.exceptions.ChannelInvalidStateError("closed")) == "broker"
    assert unavailable_dependency(aiosmtplib.SMTPConnectError("refused")) == "smtp"
    assert unavailable_dependency(aiosmtplib.SMTPServerDisconnected("bye")) == "smtp"
    assert unavailable_dependency(DependencyUnavailable("smtp", "down")) == "smtp"


def test_a_refused_connection_inside_a_driver_is_that_driver():
    async def refused() -> None:
        engine = make_engine("postgresql://postgres@127.0.0.1:9/none")  # nothing listens on port 9
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        finally:
            await engine.dispose()

    with pytest.raises(Exception) as caught:
        asyncio.run(refused())
    assert unavailable_dependency(caught.value) == "database"


def test_a_full_sqlite_file_is_the_database(tmp_path):
    """A real 'database or disk is full' from SQLite (max_page_count stands in for the full disk)."""

    async def fill() -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'full.db'}")
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text("CREATE TABLE t (x TEXT)"))
            async with engine.begin() as conn:
                await conn.execute(sa.text("PRAGMA max_page_count = 4"))
                for _ in range(100):
                    await conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": "y" * 4000})
        finally:
            await engine.dispose()

    with pytest.raises(Exception) as caught:
        asyncio.run(fill())
    assert "full" in str(caught.value)
    assert unavailable_dependency(caught.value) == "database"


def test_errors_about_the_message_are_not_a_dependency():
    class M(BaseModel):
        x: int

    with pytest.raises(ValidationError) as bad:
        M.model_validate({"x": "nope"})
    assert unavailable_dependency(bad.value) is None
    assert unavailable_dependency(PermanentError("no such organisation")) is None
    assert unavailable_dependency(ValueError("bad value")) is None
    assert unavailable_dependency(KeyError("k")) is None
    assert unavailable_dependency(IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE"))) is None
    assert unavailable_dependency(_wrapped(sqlite3.OperationalError("no such table: cases"))) is None
    assert unavailable_dependency(_wrapped(sqlite3.OperationalError("near 'x': syntax error"))) is None


def test_reason_keeps_no_statement_or_parameters():
    monitor = DependencyMonitor("planning")
    monitor.report(_wrapped(sqlite3.OperationalError("database or disk is full")))
    reason = monitor.unavailable()["database"]["reason"]
    assert "database or disk is full" in reason
    assert "190101019801" not in reason and "INSERT" not in reason


# ---- the monitor ---------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_down_and_up_change_readiness_gauge_and_log_once(caplog: pytest.LogCaptureFixture):
    changes: list[tuple[str, bool]] = []
    clock = FakeClock()
    monitor = DependencyMonitor("notify", on_change=lambda d, up: changes.append((d, up)), clock=clock)
    monitor.track("database", "broker")
    assert monitor.ready and changes == [("database", True), ("broker", True)]
    with caplog.at_level(logging.INFO, logger="sip.dependencies"):
        assert monitor.down("database", "disk full") is True
        for _ in range(50):  # fifty more messages meet the outage: no more log lines, no more changes
            assert monitor.down("database", "disk full") is False
        clock.now += 61
        assert not monitor.ready
        assert monitor.unavailable() == {"database": {"reason": "disk full", "down_seconds": 61.0}}
        assert monitor.up("database") is True
        assert monitor.up("database") is False
    assert monitor.ready and monitor.unavailable() == {}
    assert changes[2:] == [("database", False), ("database", True)]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unavailable" in lines[0] and "again" in lines[1]


def test_backoff_doubles_to_its_cap_and_resets_when_back():
    clock = FakeClock()
    monitor = DependencyMonitor("planning", backoff_initial=0.5, backoff_max=120.0, clock=clock)
    waits = []
    for _ in range(12):
        monitor.down("database", "x")
        waits.append(monitor.backoff("database"))
        clock.now += waits[-1]
    assert waits[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert waits[-1] == 120.0 and max(waits) == 120.0
    monitor.up("database")
    monitor.down("database", "x")
    assert monitor.backoff("database") == 0.5


def test_many_failing_together_count_as_one_round():
    """Thirty held messages meeting the outage at once grow the backoff once, not thirty times."""
    clock = FakeClock()
    monitor = DependencyMonitor("planning", backoff_initial=0.5, backoff_max=120.0, clock=clock)
    for _ in range(30):
        monitor.down("database", "x")
    assert monitor.backoff("database") == 0.5
    clock.now += 0.5
    for _ in range(30):
        monitor.down("database", "x")
    assert monitor.backoff("database") == 1.0


def test_wait_ends_when_the_dependency_is_back():
    async def scenario() -> float:
        monitor = DependencyMonitor("planning", backoff_initial=30.0, backoff_max=30.0)
        monitor.down("database", "x")
        loop = asyncio.get_running_loop()
        started = loop.time()
        loop.call_later(0.1, monitor.up, "database")
        await monitor.wait("database")
        return loop.time() - started

    assert asyncio.run(scenario()) < 5


def test_the_probe_brings_a_dependency_back_by_itself():
    async def scenario() -> tuple[bool, bool, int]:
        healthy = asyncio.Event()
        tries = 0

        async def probe() -> None:
            nonlocal tries
            tries += 1
            if not healthy.is_set():
                raise ConnectionRefusedError("still down")

        monitor = DependencyMonitor("consent", backoff_initial=0.02, backoff_max=0.05)
        monitor.add_probe("database", probe)
        monitor.down("database", "refused")
        await asyncio.sleep(0.3)
        still_down = not monitor.ready
        healthy.set()
        for _ in range(100):
            if monitor.ready:
                break
            await asyncio.sleep(0.02)
        ready = monitor.ready
        await monitor.close()
        return still_down, ready, tries

    still_down, ready, tries = asyncio.run(scenario())
    assert still_down and ready and tries >= 3


def test_a_request_that_meets_an_unavailable_database_gets_503_not_500():
    import httpx
    from fastapi import FastAPI

    from shared.runtime import install_dependency_handlers

    monitor = DependencyMonitor("planning")
    app = FastAPI()
    install_dependency_handlers(app, monitor)

    @app.get("/cases")
    async def full() -> None:
        raise _wrapped(sqlite3.OperationalError("database or disk is full"))

    @app.get("/fhir/CarePlan")
    async def refused() -> None:
        raise ConnectionRefusedError(111, "Connect call failed")

    @app.get("/bug")
    async def bug() -> None:
        raise _wrapped(sqlite3.OperationalError("no such table: cases"))

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/cases"), await client.get("/fhir/CarePlan"), await client.get("/bug")

    full_disk, fhir, bug_ = asyncio.run(scenario())
    assert full_disk.status_code == 503 and full_disk.headers["Retry-After"] == "1"
    assert "database" in full_disk.json()["detail"]
    assert fhir.status_code == 503 and fhir.json()["resourceType"] == "OperationOutcome"
    assert bug_.status_code == 500  # not a dependency: stays an error
    assert "database" in monitor.unavailable()
