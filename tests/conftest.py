from __future__ import annotations

import json
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
def _service_database_backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """SIP_TEST_DATABASE=postgres: every service store a test opens through its settings (in-process)
    lives on the real PostgreSQL instead of a SQLite file under data_dir (see tests/support/dbmode.py;
    services started as processes get the same through tests/support/suite.py).

    On SQLite, a test marked ``store_free`` (left out of the PostgreSQL run) fails if it opens a
    service store through its settings or starts services with one: it would run differently there."""
    if not dbmode.ON_POSTGRES:
        if request.node.get_closest_marker("store_free") is None:
            yield
            return
        opened = _watch_service_stores(monkeypatch)
        yield
        if opened:
            pytest.fail(
                f"marked store_free but opened service stores {sorted(set(opened))}: it runs differently on "
                "PostgreSQL, so drop the mark (the PostgreSQL run then runs it too)"
            )
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


def _watch_service_stores(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every service store the test opens through ServiceSettings (no database_url of its own)
    and every set of services it starts with theirs (tests/support/suite.py asks dbmode.service_env)."""
    opened: list[str] = []
    sqlite_default = ServiceSettings.sqlalchemy_url
    service_env = dbmode.service_env

    def watched_url(self: ServiceSettings, service: str) -> str:
        if not self.database_url:
            opened.append(service)
        return sqlite_default(self, service)

    def watched_env(data_dir: str | Path) -> dict[str, str]:
        opened.append(f"services under {Path(data_dir).name}")
        return service_env(data_dir)

    monkeypatch.setattr(ServiceSettings, "sqlalchemy_url", watched_url)
    monkeypatch.setattr(dbmode, "service_env", watched_env)
    return opened


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


#: seconds a test of each weight takes when tests/durations.json does not know it
_TYPICAL_SECONDS = {3: 60.0, 2: 8.0, 1: 1.0, 0: 0.05}
_DURATIONS = Path(__file__).with_name("durations.json")


def _expected_seconds(durations: dict[str, float], item: pytest.Item) -> float:
    known = durations.get(item.nodeid)
    return known if known is not None else _TYPICAL_SECONDS[_weight(item)]


def _longest_first(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """The order that ends a run of ``workers`` xdist workers with short tests on all of them.

    ``--dist worksteal`` hands worker i the i-th contiguous slice of the collection (n // workers
    tests, the rest evenly), each runs its slice in order, and a worker that runs out takes the tail
    half of the longest queue. So the tests are dealt longest first into slices of those sizes, each
    to the slice with the least expected time so far: every worker starts on long tests (the fault
    streams, whose outages leave the CPU to the other worker), stealing takes short ones, and the run
    does not end with one worker in a five-minute stream while the other idles. Expected times:
    tests/durations.json (this machine's, per database), else a typical time of the test's kind."""
    durations: dict[str, float] = {}
    if _DURATIONS.exists():
        durations = json.loads(_DURATIONS.read_text()).get(dbmode.BACKEND, {})
    expected = {id(item): _expected_seconds(durations, item) for item in items}
    # a stable sort: equal times keep the collection order, the same in every worker
    order = sorted(items, key=lambda item: expected[id(item)], reverse=True)
    sizes, left = [], len(order)
    for i in range(workers):
        sizes.append(left // (workers - i))
        left -= sizes[-1]
    slices: list[list[pytest.Item]] = [[] for _ in sizes]
    load = [0.0] * workers
    for item in order:
        i = min((i for i in range(workers) if len(slices[i]) < sizes[i]), key=lambda i: (load[i], i))
        slices[i].append(item)
        load[i] += expected[id(item)]
    return [item for part in slices for item in part]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a PostgreSQL run, a test's explicit ``sqlite`` variant is left out (its ``postgres`` twin runs),
    and so are tests marked ``sqlite_only`` (about the SQLite file itself) and ``store_free`` (the same
    on both databases: it ran in the SQLite run, which checks that it opened no service store).

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
    if dbmode.ON_POSTGRES:
        keep, drop = [], []
        for item in items:
            callspec = getattr(item, "callspec", None)
            params = callspec.params.values() if callspec else ()
            if (
                item.get_closest_marker("sqlite_only")
                or item.get_closest_marker("store_free")
                or "sqlite" in [p for p in params if isinstance(p, str)]
            ):
                drop.append(item)
            else:
                keep.append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    # each xdist worker collects and orders alike (the controller checks the collections are equal)
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    items[:] = _longest_first(items, workers)


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
