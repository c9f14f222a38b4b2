"""A PostgreSQL cluster of a test's own, on a free port, that the test may stop and start.

The machine's shared PostgreSQL (5432) serves every other test and must never be stopped; a fault
test that takes the database away makes its own cluster with the server binaries
(``/usr/lib/postgresql/<version>/bin``: ``initdb``, ``pg_ctl``), trust authentication on 127.0.0.1
only, its socket and data in a temporary directory. PostgreSQL refuses to run as root: as root the
binaries run as the ``postgres`` user (``runuser -u postgres``), the directory owned by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.infra import free_port


def pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (``SIP_TEST_PG_BIN`` wins)."""
    if env := os.environ.get("SIP_TEST_PG_BIN"):
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PrivateCluster:
    bin: Path
    root: Path
    port: int
    user: str | None  # run the binaries as this user (when we are root)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)

    def init(self) -> None:
        r = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-instructions", "--no-sync")  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.decode(errors='replace')}")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\nmax_connections = 200\n"
                "shared_buffers = 32MB\n"
            )

    def start(self) -> None:
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                      "start")  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.decode(errors='replace')}\n{self.log()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: connections are terminated, as in a routine restart)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=self.port, user="postgres", database="postgres"
            )
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(run())
        return self.url(name)


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """Init and start a cluster on a free port; stopped and removed afterwards."""
    binaries = pg_bin()
    if binaries is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb/pg_ctl) on this machine")
    root = Path(tempfile.mkdtemp(prefix="sip-pg-"))
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    root.chmod(0o700)
    cluster = PrivateCluster(binaries, root, free_port(), user)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop("immediate")
        deadline = time.monotonic() + 10
        while (cluster.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)
