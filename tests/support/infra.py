"""Real infrastructure for tests: RabbitMQ vhosts, PostgreSQL databases, processes, an SMTP server.

Nothing here is a double: tests that use these talk to the machine's RabbitMQ and PostgreSQL and to
real processes over real sockets. Each test gets its own vhost / database, so tests never see each
other's queues or rows.
"""

from __future__ import annotations

import atexit
import email
import email.policy
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
RABBIT_HOST = os.environ.get("SIP_TEST_RABBIT_HOST", "127.0.0.1")
PG_DSN = os.environ.get("SIP_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


# Ports for the tests' own listeners. The kernel's choice (bind to port 0) comes from the ephemeral
# range that every outgoing connection also draws from, and the two xdist workers draw at the same
# time: a port chosen here and bound a few seconds later (a fresh clone's `make run` installs first)
# could be taken meanwhile by the other worker (CI failed on it once). Each worker therefore has its
# own block below the ephemeral range (32768-60999), walked from a per-process offset, and a port is
# handed out only if it can be bound now.
_PORT_BASE, _PORT_BLOCK, _PORT_BLOCKS = 20000, 1500, 8


def _port_block() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, … (none: the main process)
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    return _PORT_BASE + (index % _PORT_BLOCKS) * _PORT_BLOCK


_port_walk = itertools.count(os.getpid() % _PORT_BLOCK)


def free_port() -> int:
    base = _port_block()
    for _ in range(_PORT_BLOCK):
        port = base + next(_port_walk) % _PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (or lingering): the next one
            return port
    raise RuntimeError(f"no free port in {base}-{base + _PORT_BLOCK - 1}")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def rabbit_is_up() -> bool:
    try:
        with socket.create_connection((RABBIT_HOST, 5672), timeout=1):
            return True
    except OSError:
        return False


def ensure_rabbit() -> None:
    """Start the machine's broker if a test (or anything) stopped it."""
    if rabbit_is_up():
        return
    subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        r = subprocess.run(["rabbitmqctl", "-q", "await_startup"], capture_output=True, timeout=95)
        if r.returncode == 0 and rabbit_is_up():
            return
        time.sleep(1)
    raise RuntimeError("RabbitMQ did not start")


class _VhostPool:
    """Fresh vhosts made in batches, each deleted as soon as its test is done.

    Each ``rabbitmqctl`` call starts an Erlang VM (about half a second of CPU); three of them per test
    (add, permissions, delete) were minutes of the suite. Here one ``rabbitmqctl eval`` makes
    :attr:`BATCH` vhosts (guest has every permission on each; an empty vhost costs the broker almost
    nothing) and one deletes a used one; a broker where ``eval`` is refused falls back to one command
    at a time. Every test still gets a vhost no other test has used.

    A used vhost is not kept for a batched deletion: its queues hold file handles (the suite's
    topology is about 120 of them) and RabbitMQ rations those (``file_handle_cache``: 927 under the
    usual 1024 open-files limit). Seven used vhosts left standing exhausted it, and the broker then
    held every new connection until another one closed — a service started a minute late.
    """

    BATCH = 8

    def __init__(self) -> None:
        self._ready: list[str] = []
        self._eval = True
        self._session = uuid.uuid4().hex[:6]

    def take(self) -> str:
        ensure_rabbit()
        if not self._ready:
            names = [f"t-{self._session}-{uuid.uuid4().hex[:8]}" for _ in range(self.BATCH)]
            self._ready = self._run(names, add=True)
        return self._ready.pop()

    def give_back(self, name: str) -> None:
        ensure_rabbit()
        self._run([name], add=False)

    def flush(self) -> None:
        """Delete the vhosts made and never used."""
        names, self._ready = self._ready, []
        if names:
            ensure_rabbit()
            self._run(names, add=False)

    def _run(self, names: list[str], *, add: bool) -> list[str]:
        if self._eval:
            bins = [f'<<"{n}">>' for n in names]
            if add:
                body = ", ".join(
                    f'ok = rabbit_vhost:add({b}, <<"tests">>), ok = rabbit_auth_backend_internal:'
                    f'set_permissions(<<"guest">>, {b}, <<".*">>, <<".*">>, <<".*">>, <<"tests">>)'
                    for b in bins
                )
            else:
                body = ", ".join(f'rabbit_vhost:delete({b}, <<"tests">>)' for b in bins)
            r = subprocess.run(
                ["rabbitmqctl", "-q", "eval", body + ", done."], capture_output=True, timeout=120
            )
            if r.returncode == 0 and b"done" in r.stdout:
                return names
            self._eval = False  # e.g. a broker that does not allow eval: one command at a time
        for n in names:
            if add:
                _rabbitmqctl("add_vhost", n)
                _rabbitmqctl("set_permissions", "-p", n, "guest", ".*", ".*", ".*")
            else:
                subprocess.run(["rabbitmqctl", "-q", "delete_vhost", n], capture_output=True, timeout=60)
        return names


_VHOSTS = _VhostPool()
# at exit (of pytest, a benchmark or a script): the vhosts made and never used
atexit.register(_VHOSTS.flush)


@contextmanager
def rabbit_vhost() -> Iterator[str]:
    vhost = _VHOSTS.take()
    try:
        yield f"amqp://guest:guest@{RABBIT_HOST}:5672/{vhost}"
    finally:
        _VHOSTS.give_back(vhost)


def pg_admin(sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) on the machine's PostgreSQL, from any context."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # a thread of its own: callers may already be inside a running event loop
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def pg_url(name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the machine's PostgreSQL."""
    base = PG_DSN.rsplit("/", 1)[0]
    return f"postgresql+asyncpg://{base.split('://', 1)[1]}/{name}"


@contextmanager
def pg_database() -> Iterator[str]:
    name = f"sip_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url(name)
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str | None = None
    popen: subprocess.Popen[bytes] | None = None
    _log: object = field(default=None, repr=False)

    def start(self, timeout: float = 60.0) -> Proc:
        """Spawn and wait until healthy; one that is not is stopped (its stacks and log are in the
        error) instead of left running — and reconnecting — past its test."""
        self.spawn()
        if self.health_url:
            try:
                self.wait_healthy(timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def spawn(self) -> Proc:
        """Start the process without waiting for it to be healthy (see :meth:`wait_healthy`)."""
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); log:\n{self.log()}")
            try:
                r = httpx.get(self.health_url, timeout=2)  # type: ignore[arg-type]
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not healthy in {timeout}s: {last}\n{self.log()}\n{self.stacks()}")

    def stacks(self) -> str:
        """Where a live process is stuck: every thread's Python stack (py-spy, installed with the dev
        dependencies), for the failure message."""
        if self.popen is None or self.popen.poll() is not None:
            return ""
        spy = Path(sys.executable).with_name("py-spy")
        try:
            r = subprocess.run(
                [str(spy), "dump", "--pid", str(self.popen.pid)], capture_output=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(no stacks: {exc!r})"
        return f"stacks of {self.name}:\n" + (r.stdout or r.stderr).decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class MailSink:
    smtp_port: int
    http_port: int
    directory: Path
    proc: Proc

    def messages(self) -> list[EmailMessage]:
        out = []
        for p in sorted(self.directory.glob("*.eml")):
            out.append(email.message_from_bytes(p.read_bytes(), policy=email.policy.default))
        return out  # type: ignore[return-value]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.messages()
            if len(msgs) >= count:
                return msgs
            time.sleep(0.2)
        return self.messages()


@contextmanager
def mail_sink(tmp: Path) -> Iterator[MailSink]:
    smtp_port, http_port = free_port(), free_port()
    directory = tmp / "mail"
    proc = Proc(
        "mailsink",
        python_module(
            "devtools.mailsink",
            "--smtp-port",
            str(smtp_port),
            "--http-port",
            str(http_port),
            "--dir",
            str(directory),
        ),
        env=dict(os.environ),
        log_path=tmp / "mailsink.log",
        health_url=f"http://127.0.0.1:{http_port}/healthz",
    ).start()
    try:
        yield MailSink(smtp_port, http_port, directory, proc)
    finally:
        proc.stop()
