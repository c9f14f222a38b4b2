from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import ServiceSettings
from tests.support import dbmode
from tests.support.infra import MailSink, mail_sink, pg_database, rabbit_vhost

# Planning listens for HL7 v2 over MLLP on 2575 by default; in tests each planning (in-process or a
# child process) takes any free port unless a test names one, so replicas and parallel runs never collide.
os.environ.setdefault("PLANNING_MLLP_PORT", "0")
# Authentication: services (in-process and child processes) trust tokens signed with this test-only
# secret. Most tests run the sandbox mode (SIP_AUTH_REQUIRED=false: the acting organisation comes from
# X-Sip-Organisation); tests/integration/ops/test_auth.py and the e2e auth test switch it on.
TEST_JWT_SECRET = "test-only-secret-never-in-production"
os.environ.setdefault("SIP_JWT_HS256_SECRET", TEST_JWT_SECRET)
os.environ.setdefault("SIP_AUTH_REQUIRED", "false")


@pytest.fixture(autouse=True)
def _service_database_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SIP_TEST_DATABASE=postgres: every service store a test opens through its settings (in-process)
    lives on the real PostgreSQL instead of a SQLite file under data_dir (see tests/support/dbmode.py;
    services started as processes get the same through tests/support/suite.py)."""
    if not dbmode.ON_POSTGRES:
        yield
        return
    sqlite_default = ServiceSettings.sqlalchemy_url

    def on_postgres(self: ServiceSettings, service: str) -> str:
        if self.database_url:
            return self.database_url
        return dbmode.database_url(self.data_dir, service)

    monkeypatch.setattr(ServiceSettings, "sqlalchemy_url", on_postgres)
    try:
        yield
    finally:
        monkeypatch.setattr(ServiceSettings, "sqlalchemy_url", sqlite_default)
        dbmode.drop_databases()


def _weight(item: pytest.Item) -> int:
    if item.get_closest_marker("fault"):
        return 3
    if item.get_closest_marker("e2e"):
        return 2
    if (
        item.get_closest_marker("broker")
        or item.get_closest_marker("postgres")
        or item.get_closest_marker("slow")
    ):
        return 1
    return 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a PostgreSQL run, a test's explicit ``sqlite`` variant is left out (its ``postgres`` twin runs),
    and so are tests marked ``sqlite_only`` (about the SQLite file itself).

    Every test under tests/e2e is marked ``e2e`` and ``broker``, and every test under tests/fault also
    ``fault``, whether or not its module says so: `make test-fast` leaves them out by these marks, and
    `make test` runs the fault tests alone (they stop what the others use)."""
    for item in items:
        parts = item.path.parts
        if "tests" in parts and {"e2e", "fault"} & set(parts[parts.index("tests") :]):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.broker)
        if "tests" in parts and "fault" in parts[parts.index("tests") :]:
            item.add_marker(pytest.mark.fault)
    # The longest tests first (the fault streams, then the suites of processes, then what needs the
    # broker or PostgreSQL): `make test` hands tests to its workers with work stealing, so a worker that
    # runs out takes the other's pending tests, and the run ends with short tests, not one long stream
    # on one worker while the other idles. A stable sort: within a weight, the collection order.
    items.sort(key=_weight, reverse=True)
    if not dbmode.ON_POSTGRES:
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec else ()
        if item.get_closest_marker("sqlite_only") or "sqlite" in [p for p in params if isinstance(p, str)]:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A fresh vhost on the machine's real RabbitMQ, deleted afterwards."""
    with rabbit_vhost() as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the machine's real PostgreSQL, dropped afterwards."""
    with pg_database() as url:
        yield url


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[MailSink]:
    """A real SMTP server process (aiosmtpd) on localhost that keeps what arrives."""
    with mail_sink(tmp_path) as sink:
        yield sink


@pytest.fixture
def directory_path() -> Path:
    return Path(__file__).resolve().parents[1] / "config" / "directory.yaml"
