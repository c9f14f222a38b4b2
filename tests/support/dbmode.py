"""Which database the services' stores use in this test run: SQLite (the embedded default) or PostgreSQL.

``SIP_TEST_DATABASE=postgres`` runs the suite with every service store on the machine's real
PostgreSQL: wherever a service would open its SQLite file under ``data_dir`` (in-process settings and
the services started as processes alike), it gets a database of its own, created for the test,
migrated by the service itself at start (Alembic, as in production) and dropped afterwards. One
database per (data directory, service), like one SQLite file per service under its data directory, so
a restarted service or a second replica finds the same rows.

``make test`` runs the suite once on SQLite and once more on PostgreSQL.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

from tests.support.infra import pg_admin, pg_url

BACKEND = os.environ.get("SIP_TEST_DATABASE", "sqlite").strip().lower() or "sqlite"
if BACKEND not in ("sqlite", "postgres"):
    raise RuntimeError(f"SIP_TEST_DATABASE must be sqlite or postgres, not {BACKEND!r}")
ON_POSTGRES = BACKEND == "postgres"

_lock = threading.Lock()
_databases: dict[tuple[str, str], str] = {}  # (data dir, service) -> database name


def database_url(data_dir: str | Path, service: str) -> str:
    """The PostgreSQL database standing in for ``<data_dir>/<service>.db`` (created on first use)."""
    key = (str(Path(data_dir).resolve()), service)
    with _lock:
        name = _databases.get(key)
        if name is None:
            name = f"sip_{service}_{uuid.uuid4().hex[:10]}"
            pg_admin(f'CREATE DATABASE "{name}"')
            _databases[key] = name
    return pg_url(name)


def drop_databases() -> None:
    """Drop every database made since the last call (the end of each test)."""
    with _lock:
        names = list(_databases.values())
        _databases.clear()
    for name in names:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def service_env(data_dir: str | Path) -> dict[str, str]:
    """Environment for services started as processes: each one's database on PostgreSQL when the run
    is on PostgreSQL, nothing (SQLite under SIP_DATA_DIR) otherwise."""
    if not ON_POSTGRES:
        return {}
    return {
        f"{service.upper()}_DATABASE_URL": database_url(data_dir, service)
        for service in ("planning", "consent", "notify")
    }
