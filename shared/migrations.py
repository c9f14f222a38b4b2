"""Schema migrations (Alembic) for PostgreSQL; SQLite, the embedded default, is created from the models.

Each service owns its database and its migration history in its own package
(``services/<service>/migrations``, so the installed image carries it) and hands that directory to
its :class:`~shared.runtime.ServiceRuntime`. On PostgreSQL the runtime upgrades the database to the
newest revision at start-up, under an advisory lock so replicas starting together take turns.
Operators and developers use ``python -m devtools.migrate`` (upgrade, current, history, revision).

``tests/integration/ops/test_migrations.py`` upgrades empty PostgreSQL databases and checks that the
models and the migrated schema do not differ, so a model change without a migration fails the tests.
"""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: SQLite, the default, never needs it, and importing it costs
# a service about a second of its start-up.


def has_migrations(directory: Path | None) -> bool:
    return directory is not None and any((directory / "versions").glob("*.py"))


def alembic_config(directory: Path, url: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("script_location", str(directory))
    cfg.set_main_option("version_locations", str(directory / "versions"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_to_head(sync_conn: sa.Connection, directory: Path) -> None:
    """Run inside the service's start-up transaction (``conn.run_sync``)."""
    if sync_conn.dialect.name == "postgresql":
        key = zlib.crc32(f"sip-suite:migrations:{directory.parent.name}".encode())
        sync_conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    from alembic import command

    cfg = alembic_config(directory)
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Migrations do not import the application: its UTC datetime type is a timestamptz."""
    if type_ == "type" and type(obj).__name__ == "UTCDateTime":
        return "sa.DateTime(timezone=True)"
    return False


def run_env() -> None:
    """The body of every service's ``migrations/env.py``: migrate on the connection the runtime hands
    over (start-up), or on ``sqlalchemy.url`` (``devtools.migrate``)."""
    from alembic import context
    from sqlalchemy.ext.asyncio import create_async_engine

    if context.is_offline_mode():
        raise SystemExit("offline (SQL script) mode is not supported")
    config = context.config

    def run(connection: sa.Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=config.attributes.get("target_metadata"),
            compare_type=True,
            render_item=_render_item,
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database URL (--url)")

    async def go() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(run)
        await engine.dispose()

    asyncio.run(go())
