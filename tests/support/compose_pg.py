"""The compose PostgreSQL as its init scripts make it, on a private cluster (tests/support/private_pg.py).

:func:`password_cluster` starts a private cluster where the superuser ``postgres`` still logs in
without a password (trust: the test's own admin connection and the init scripts' psql) and every
other role needs its password (scram-sha-256), as in the container. :func:`run_initdb_scripts` runs
deploy/postgres/initdb/ as the image's docker-entrypoint.sh would: each ``*.sh`` in name order with
the container's environment, psql reaching the server through PGHOST/PGPORT.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping

from tests.support.infra import REPO
from tests.support.private_pg import PrivateCluster, private_cluster

INITDB = REPO / "deploy" / "postgres" / "initdb"
ENTRYPOINT = REPO / "deploy" / "postgres" / "entrypoint.sh"


@contextlib.contextmanager
def password_cluster() -> Iterator[PrivateCluster]:
    with private_cluster() as cluster:
        hba = cluster.data / "pg_hba.conf"
        hba.write_text(
            "local all postgres trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        r = cluster._run("pg_ctl", "-D", str(cluster.data), "reload")
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl reload failed: {r.stderr.decode(errors='replace')}")
        yield cluster


def run_initdb_scripts(cluster: PrivateCluster, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """The init scripts with ``env`` (the postgres container's environment); POSTGRES_USER is the
    cluster's superuser here (``postgres``), as the image makes POSTGRES_USER the superuser."""
    run_env = {
        "PATH": os.environ["PATH"],
        **env,
        "POSTGRES_USER": "postgres",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(cluster.port),
    }
    if run_env.get("POSTGRES_DB"):
        subprocess.run(
            ["psql", "-X", "-q", "-U", "postgres", "-d", "postgres", "-c", f'CREATE DATABASE "{run_env["POSTGRES_DB"]}"'],
            env=run_env, check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    last: subprocess.CompletedProcess[str] | None = None
    for script in sorted(INITDB.glob("*.sh")):
        last = subprocess.run(
            ["sh", str(script)], env=run_env, capture_output=True, text=True, timeout=120, check=False
        )
        if last.returncode != 0:
            return last
    assert last is not None, f"no init scripts in {INITDB}"
    return last


def run_entrypoint(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """deploy/postgres/entrypoint.sh in check-only mode (no arguments) or exec'ing ``args``."""
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def service_url(cluster: PrivateCluster, role: str, password: str, database: str) -> str:
    return f"postgresql://{role}:{password}@127.0.0.1:{cluster.port}/{database}"
