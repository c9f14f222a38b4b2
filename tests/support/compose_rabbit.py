"""A RabbitMQ node of a test's own, booted from the compose broker's rendered definitions.

The machine's shared broker (5672) serves every other test and already has users and vhosts of its
own; the compose stack's broker is a fresh one whose ``load_definitions`` creates vhost ``sip``, the
operator and the three least-privilege service users (and no guest). This starts such a node with the
machine's RabbitMQ installation: its own node name, AMQP port and distribution port, its data and logs
in a temporary directory, no plugins (the shared node has the management ports), and
``load_definitions`` pointing at the definitions deploy/rabbitmq/entrypoint.sh rendered. It is stopped
(its process group) and removed afterwards. Readiness: a login of one of the definitions' users.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.infra import free_port


@dataclass
class PrivateRabbit:
    port: int
    root: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        logs = sorted((self.root / "log").glob("*.log"))
        out = "".join(p.read_text(errors="replace")[-3000:] for p in logs)
        return out + (self.root / "stdout.log").read_text(errors="replace")[-2000:]


def _wait_for_login(port: int, user: str, password: str, vhost: str, proc: subprocess.Popen[bytes],
                    timeout: float) -> None:  # fmt: skip
    import asyncio

    import aio_pika

    async def attempt() -> None:
        conn = await aio_pika.connect(f"amqp://{user}:{password}@127.0.0.1:{port}/{vhost}", timeout=5)
        await conn.close()

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the private RabbitMQ node exited ({proc.returncode})")
        try:
            asyncio.run(attempt())
            return
        except Exception as exc:  # not listening yet, or definitions not loaded yet
            last = exc
            time.sleep(1)
    raise TimeoutError(f"the private RabbitMQ node did not accept {user} in {timeout}s: {last!r}")


@contextlib.contextmanager
def private_rabbit(
    definitions: Path, *, login: tuple[str, str, str], timeout: float = 120
) -> Iterator[PrivateRabbit]:
    """Boot a node that imports ``definitions`` (a rendered definitions.json); ``login`` = (user,
    password, vhost) that must work before it counts as up."""
    if shutil.which("rabbitmq-server") is None:
        raise RuntimeError("no rabbitmq-server on this machine")
    root = Path(tempfile.mkdtemp(prefix="sip-rabbit-"))
    root.chmod(0o755)
    port, dist = free_port(), free_port()
    (root / "log").mkdir()
    (root / "mnesia").mkdir()
    shutil.copy(definitions, root / "definitions.json")
    (root / "rabbitmq.conf").write_text(
        f"listeners.tcp.local = 127.0.0.1:{port}\n"
        f"load_definitions = {root / 'definitions.json'}\n"
        "log.console = false\nlog.file.level = warning\n"
    )
    (root / "enabled_plugins").write_text("[].\n")
    if os.geteuid() == 0:  # the Debian rabbitmq-server drops to the rabbitmq user: it owns the node's files
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam("rabbitmq")
            for path in [root, *root.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": f"sip-compose-{uuid.uuid4().hex[:8]}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
        "RABBITMQ_CONFIG_FILES": str(root / "conf.d"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
        "RABBITMQ_LOG_BASE": str(root / "log"),
        "RABBITMQ_PID_FILE": str(root / "rabbit.pid"),
        "ERL_CRASH_DUMP": str(root / "erl_crash.dump"),
    }
    with open(root / "stdout.log", "wb") as out:
        proc = subprocess.Popen(
            ["rabbitmq-server"],
            env=env,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node = PrivateRabbit(port, root, proc)
    try:
        try:
            _wait_for_login(port, *login, proc=proc, timeout=timeout)
        except BaseException as exc:
            raise RuntimeError(f"{exc}\n{node.log()}") from exc
        yield node
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
