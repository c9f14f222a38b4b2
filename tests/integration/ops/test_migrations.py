"""Alembic migrations: each service's migrations upgrade an empty PostgreSQL database to exactly its
models (a model changed without a migration fails here), twice is a no-op, replicas may race."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from devtools.migrate import SERVICES
from shared.migrations import alembic_config, has_migrations

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[3]


def app_for(service: str, url: str):
    import importlib

    app_mod = importlib.import_module(f"services.{service}.app")
    settings_mod = importlib.import_module(f"services.{service}.settings")
    cls = next(v for k, v in vars(settings_mod).items() if k.endswith("Settings") and k != "ServiceSettings")
    return app_mod.create_app(cls(database_url=url, directory_path=str(REPO / "config/directory.yaml")))


def differences(sync_conn: sa.Connection, metadata: sa.MetaData) -> list:
    ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    return [
        d
        for d in compare_metadata(ctx, metadata)
        if not (d[0] == "remove_table" and d[1].name == "alembic_version")
    ]


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_upgrade_an_empty_database_to_exactly_the_models(service, pg_url):
    runtime = app_for(service, pg_url).state.runtime
    assert has_migrations(runtime.migrations)
    try:
        await runtime.prepare_database()
        await runtime.prepare_database()  # again: nothing to do
        async with runtime.engine.connect() as conn:
            assert await conn.run_sync(differences, runtime.metadata) == []
            version = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
        # the newest revision of the service's own history (one head: no branch left unmerged)
        assert version == ScriptDirectory.from_config(alembic_config(runtime.migrations)).get_current_head()
    finally:
        await runtime.engine.dispose()


async def test_replicas_starting_together_migrate_once(pg_url):
    runtimes = [app_for("planning", pg_url).state.runtime for _ in range(3)]
    try:
        await asyncio.gather(*(r.prepare_database() for r in runtimes))
        async with runtimes[0].engine.connect() as conn:
            assert await conn.run_sync(differences, runtimes[0].metadata) == []
    finally:
        for r in runtimes:
            await r.engine.dispose()
