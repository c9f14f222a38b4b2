"""scripts/ensure-infra.sh: what is missing is named with how to get it, and `make run` stops at once;
a second `make run` is refused while the first one's ports are taken.

Each condition is arranged for real: a PATH without rabbitmq-server / pg_ctlcluster, addresses where
nothing listens, listening sockets standing in for a running broker or a running suite."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.infra import REPO, free_port

SCRIPT = REPO / "scripts" / "ensure-infra.sh"
SUITE_PORTS = (
    "PLANNING_HTTP_PORT", "CONSENT_HTTP_PORT", "NOTIFY_HTTP_PORT", "PLANNING_MLLP_PORT", "NOTIFY_SMTP_PORT",
    "MAILSINK_HTTP_PORT",
)  # fmt: skip


@pytest.fixture
def bare_path(tmp_path: Path) -> str:
    """A PATH with the few tools the script uses, and no RabbitMQ or PostgreSQL installed."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("bash", "seq", "sleep", "ls", "head", "timeout"):
        (tools / tool).symlink_to(shutil.which(tool))
    return str(tools)


@pytest.fixture
def listening() -> Iterator[callable]:
    socks: list[socket.socket] = []

    def open_one() -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        socks.append(s)
        return int(s.getsockname()[1])

    yield open_one
    for s in socks:
        s.close()


def run(mode: str, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp")}
    base.update({name: str(free_port()) for name in SUITE_PORTS})
    return subprocess.run(
        ["bash", str(SCRIPT), mode], env={**base, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("mode", ["run", "test"])
def test_a_missing_rabbitmq_is_named_with_how_to_get_it(bare_path, mode):
    r = run(mode, bare_path, SIP_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    assert r.returncode == 1
    assert "RabbitMQ is missing" in r.stderr and "not installed" in r.stderr
    assert "sudo apt-get install rabbitmq-server" in r.stderr
    assert "docker compose up -d rabbitmq" in r.stderr and "SIP_AMQP_URL=" in r.stderr
    assert "PostgreSQL" not in r.stderr  # stops at the first thing missing


def test_a_remote_broker_that_does_not_answer_is_named(bare_path):
    r = run("run", bare_path, SIP_AMQP_URL="amqp://u:p@192.0.2.1:5999/sip")  # TEST-NET: never answers
    assert r.returncode == 1 and "192.0.2.1:5999" in r.stderr and "apt-get" not in r.stderr


def test_tests_need_postgresql_and_say_how_to_get_it(bare_path, listening):
    broker = listening()
    r = run(
        "test", bare_path, SIP_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{broker}/",
        SIP_TEST_PG_DSN=f"postgresql://postgres@127.0.0.1:{free_port()}/test",
    )  # fmt: skip
    assert r.returncode == 1
    assert "PostgreSQL is missing" in r.stderr
    assert "sudo apt-get install postgresql" in r.stderr and "docker compose up -d postgres" in r.stderr
    assert "SIP_TEST_PG_DSN=" in r.stderr


def test_make_run_needs_only_rabbitmq(bare_path, listening):
    broker = listening()
    r = run(
        "run", bare_path, SIP_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{broker}/",
        SIP_TEST_PG_DSN=f"postgresql://postgres@127.0.0.1:{free_port()}/test",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run(
        "test", bare_path, SIP_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{broker}/",
        SIP_TEST_PG_DSN=f"postgresql://postgres@127.0.0.1:{listening()}/test",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("taken", ["PLANNING_HTTP_PORT", "PLANNING_MLLP_PORT", "MAILSINK_HTTP_PORT"])
def test_a_second_suite_is_refused_naming_the_port_in_use(bare_path, listening, taken):
    port = listening()  # the first suite's listener
    # the broker check comes after: the refusal does not depend on it
    r = run(
        "run", bare_path, SIP_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/", **{taken: str(port)}
    )
    assert r.returncode == 1
    assert f"port {port} ({taken}" in r.stderr and "already in use" in r.stderr
    assert "RabbitMQ" not in r.stderr
    others = [line for line in r.stderr.splitlines() if "already in use" in line]
    assert len(others) == 1


def test_the_mllp_port_is_free_to_be_taken_when_mllp_is_off(bare_path, listening):
    broker, port = listening(), listening()
    r = run(
        "run", bare_path, SIP_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{broker}/", PLANNING_MLLP_PORT=str(port),
        PLANNING_MLLP_ENABLED="false",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def _make_n(target: str) -> subprocess.CompletedProcess[str]:
    """``make -n`` as a fresh make would print it — also when the tests run under ``make test`` (a
    nested make would otherwise print its "Entering directory" lines)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
    }
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", target],
        cwd=REPO, capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip


def test_make_run_checks_before_it_starts_anything():
    r = _make_n("run")
    lines = r.stdout.splitlines()
    assert "scripts/ensure-infra.sh run" in lines
    assert lines.index("scripts/ensure-infra.sh run") < lines.index(".venv/bin/sipctl run")
    for target in ("test-sqlite", "test-postgres"):
        lines = _make_n(target).stdout.splitlines()
        # only fetching the test tools (promtool) may come before the infrastructure check
        first = next(i for i, line in enumerate(lines) if not line.startswith("scripts/ensure-promtool.sh"))
        assert lines[first] == "scripts/ensure-infra.sh test", lines
        assert all("pytest" not in line for line in lines[:first]), lines


def test_the_browser_tests_parts_are_named_with_how_to_get_them_where_apt_get_is_not_there(bare_path):
    # a PATH with neither node/npm nor apt-get: what is missing is named, with the Debian command
    r = run("browser", bare_path)
    assert r.returncode == 1
    assert "nodejs" in r.stderr and "npm" in r.stderr and "apt-get is not available" in r.stderr
    assert "apt-get install -y --no-install-recommends" in r.stderr
    assert "RabbitMQ" not in r.stderr  # the browser mode checks only the browser tests' parts


def test_make_test_installs_the_browser_tests_parts_before_pytest():
    lines = _make_n("test-sqlite").stdout.splitlines()
    first_pytest = next(i for i, line in enumerate(lines) if "pytest" in line)
    assert "scripts/ensure-infra.sh browser" in lines[:first_pytest], lines
    assert "scripts/ensure-infra.sh browser" in (REPO / ".ci" / "run").read_text()
