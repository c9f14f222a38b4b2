"""RabbitMQ nodes of a test's own, on free ports, that the test may stop, kill and restart.

The machine's shared broker (127.0.0.1:5672, ``rabbit@localhost``) serves every other test and must
never be stopped; a test that takes the broker away starts its own node — or a cluster of three — from
the installed server (``rabbitmq-server`` 3.10, Debian's package). Each node has its own node name,
AMQP port, distribution port, data (mnesia) and log directory in a temporary directory, an empty
plugin list (no management, no Prometheus ports), and a config file of its own; the machine's
``/etc/rabbitmq/rabbitmq-env.conf`` is not read. The nodes of one cluster share an Erlang cookie
through ``HOME`` (``$HOME/.erlang.cookie``); the CLI (``rabbitmqctl -n``) is run with that ``HOME``.

The scripts are called from ``/usr/lib/rabbitmq/bin`` directly, not through ``/usr/sbin``'s wrapper
(which switches to the ``rabbitmq`` user and its ``HOME``, the shared node's cookie). The server runs
in the foreground with ``RUNNING_UNDER_SYSTEMD`` set, so the script ``exec``s the Erlang VM and the
child's pid is the VM's: :meth:`PrivateRabbit.kill` is a real ``kill -9`` of the broker.

Usage::

    with private_rabbit() as node:            # one node
        url = node.url()                      # amqp://guest:guest@127.0.0.1:<port>/
        node.stop(); node.start()             # a clean stop (as a restart for maintenance)
        node.kill(); node.start()             # a crash

    with private_rabbit_cluster(3) as cluster:
        cluster.amqp_url                      # the three URLs, comma separated (SIP_AMQP_URL)
        cluster.nodes[1].stop(); cluster.nodes[1].start()
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.infra import free_port

HOST = "127.0.0.1"
# the node names' host part: the machine's own setup uses ``rabbit@localhost`` with distribution on
# 127.0.0.1 only (epmd too); the private nodes do the same
NODE_HOST = "localhost"


def rabbit_sbin() -> Path | None:
    """Where the server's own scripts are (``SIP_TEST_RABBIT_SBIN`` wins)."""
    if env := os.environ.get("SIP_TEST_RABBIT_SBIN"):
        return Path(env)
    for candidate in (Path("/usr/lib/rabbitmq/bin"), *sorted(Path("/usr/lib/rabbitmq/lib").glob("*/sbin"))):
        if (candidate / "rabbitmq-server").exists():
            return candidate
    found = shutil.which("rabbitmq-server")
    return Path(found).parent if found else None


def _write_cookie(home: Path) -> None:
    cookie = home / ".erlang.cookie"
    if not cookie.exists():
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)


@dataclass
class PrivateRabbit:
    """One node: :meth:`start` (and wait until it serves AMQP), :meth:`stop`, :meth:`kill`."""

    sbin: Path
    root: Path  # this node's directory (data, logs, config)
    home: Path  # HOME with the Erlang cookie (shared by the nodes of a cluster)
    name: str  # the node name, e.g. sip-1a2b3c4d@localhost
    port: int  # AMQP
    dist_port: int  # Erlang distribution
    config: dict[str, str] = field(default_factory=dict)  # extra rabbitmq.conf lines (key = value)
    popen: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ addresses
    def url(self, vhost: str = "") -> str:
        """The AMQP URL of this node (vhost ``/`` unless named)."""
        return f"amqp://guest:guest@{HOST}:{self.port}/{vhost}"

    # ------------------------------------------------------------------ environment
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("RABBITMQ_") or key in ("ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS"):
                del env[key]  # nothing of the machine's (or the caller's) broker settings
        env.update(
            HOME=str(self.home),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.root / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(self.root / "rabbit.pid"),
            RABBITMQ_LOGS=str(self.root / "log" / "rabbit.log"),
            ERL_EPMD_ADDRESS=HOST,
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RUNNING_UNDER_SYSTEMD="true",  # the script execs the VM: our child is the broker
        )
        return env

    def _prepare(self) -> None:
        for d in (self.root, self.root / "mnesia", self.root / "log"):
            d.mkdir(parents=True, exist_ok=True)
        _write_cookie(self.home)
        lines = {
            "loopback_users": "none",
            "disk_free_limit.absolute": "50MB",
            "log.console": "false",
            "log.file.level": "warning",
            **self.config,
        }
        (self.root / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")

    # ------------------------------------------------------------------ the CLI
    def ctl(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <this node> ARGS`` (with the cluster's cookie)."""
        r = subprocess.run(
            [str(self.sbin / "rabbitmqctl"), "-q", "-n", self.name, *args],
            env=self.env(), capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {r.stderr or r.stdout}")
        return r

    # ------------------------------------------------------------------ life cycle
    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def accepts_amqp(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                s.settimeout(5)
                return s.recv(1) == b"\x01"  # Connection.Start: a method frame from the broker
        except OSError:
            return False

    def start(self, timeout: float = 120) -> PrivateRabbit:
        """Start the node (again) and return when it is booted and serves AMQP."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    def spawn(self) -> PrivateRabbit:
        """Start the node's VM without waiting for it (see :meth:`wait_ready`)."""
        if self.is_running():
            return self
        self._prepare()
        log = open(self.root / "log" / "stdout.log", "ab")  # the child keeps its own copy
        try:
            self.popen = subprocess.Popen(
                [str(self.sbin / "rabbitmq-server")], env=self.env(), cwd=self.root,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log()}")
            r = self.ctl("await_startup", "--timeout", "10", check=False, timeout=30)
            if r.returncode == 0 and self.accepts_amqp():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready in {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 120) -> None:
        """A clean stop of the whole node (connections closed by the broker, as in maintenance)."""
        if not self.is_running():
            return
        self.ctl("stop", check=False, timeout=timeout)
        assert self.popen is not None
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """``kill -9`` of the broker's VM (a crash: nothing is flushed, no connection is closed)."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(30)
        # the VM's port helpers (erl_child_setup, inet_gethost) go with their session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def add_vhost(self, vhost: str) -> str:
        """A vhost with every permission for guest; returns its URL on this node."""
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return self.url(vhost)

    def log(self) -> str:
        out = []
        for p in (self.root / "log" / "stdout.log", self.root / "log" / "rabbit.log"):
            with contextlib.suppress(FileNotFoundError):
                out.append(p.read_text(errors="replace")[-3000:])
        return "\n".join(out)


@dataclass
class PrivateRabbitCluster:
    """Nodes joined into one cluster (``join_cluster`` to the first node)."""

    nodes: list[PrivateRabbit]

    @property
    def amqp_url(self) -> str:
        """Every node's URL, comma separated: the form ``SIP_AMQP_URL`` takes for a cluster."""
        return self.urls()

    def urls(self, vhost: str = "") -> str:
        return ",".join(n.url(vhost) for n in self.nodes)

    def running_nodes(self) -> list[str]:
        """The running members, as the first running node sees them."""
        for node in self.nodes:
            if node.is_running():
                r = node.ctl("eval", "rabbit_nodes:all_running().", check=False, timeout=60)
                if r.returncode == 0:
                    return sorted(n for n in (x.name for x in self.nodes) if n in r.stdout)
        return []

    def add_vhost(self, vhost: str) -> str:
        """A vhost (made once, for the cluster) and the URLs of every node for it, comma separated."""
        next(n for n in self.nodes if n.is_running()).add_vhost(vhost)
        return self.urls(vhost)


def _node(sbin: Path, base: Path, home: Path, index: int, config: dict[str, str] | None) -> PrivateRabbit:
    name = f"sip-{uuid.uuid4().hex[:8]}-{index}@{NODE_HOST}"
    port = free_port()
    dist = free_port()
    while dist == port:
        dist = free_port()
    return PrivateRabbit(sbin, base / f"node{index}", home, name, port, dist, dict(config or {}))


def _make_base() -> tuple[Path, Path]:
    sbin = rabbit_sbin()
    if sbin is None:
        raise RuntimeError("no RabbitMQ server on this machine (rabbitmq-server)")
    base = Path(tempfile.mkdtemp(prefix="sip-rabbit-"))
    home = base / "home"
    home.mkdir()
    return sbin, base


def _cleanup(nodes: list[PrivateRabbit], base: Path) -> None:
    for node in nodes:
        with contextlib.suppress(Exception):
            node.kill()
    shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def private_rabbit(config: dict[str, str] | None = None) -> Iterator[PrivateRabbit]:
    """One node of the test's own, started; killed and removed afterwards."""
    sbin, base = _make_base()
    node = _node(sbin, base, base / "home", 1, config)
    try:
        node.start()
        yield node
    finally:
        _cleanup([node], base)


@contextlib.contextmanager
def private_rabbit_cluster(
    size: int = 3, config: dict[str, str] | None = None
) -> Iterator[PrivateRabbitCluster]:
    """``size`` nodes joined into one cluster, all running; killed and removed afterwards."""
    sbin, base = _make_base()
    nodes = [_node(sbin, base, base / "home", i + 1, config) for i in range(size)]
    try:
        first, rest = nodes[0], nodes[1:]
        # the nodes boot side by side, then the others join the first one at a time
        for node in nodes:
            node.spawn()
        for node in nodes:
            node.wait_ready()
        for node in rest:
            node.ctl("stop_app")
            node.ctl("reset")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
            node.wait_ready()
        cluster = PrivateRabbitCluster(nodes)
        members = cluster.running_nodes()
        if members != sorted(n.name for n in nodes):
            raise RuntimeError(f"cluster not formed: running {members}")
        yield cluster
    finally:
        _cleanup(nodes, base)
