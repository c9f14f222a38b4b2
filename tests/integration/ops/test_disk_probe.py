"""The database probe tells a full disk (SQLite): it is what brings a service back to ready after an
outage, so it must not call a full disk "up" while every write still fails."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest
import sqlalchemy as sa

from shared.dependencies import unavailable_dependency
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings
from tests.support.disk import fill, small_tmpfs

pytestmark = [
    pytest.mark.sqlite_only,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root"),
]


def test_the_database_probe_fails_on_a_full_disk_and_passes_once_there_is_room():
    with small_tmpfs(16) as data:
        metadata = sa.MetaData()
        sa.Table("t", metadata, sa.Column("x", sa.Text))
        runtime = ServiceRuntime("consent", ServiceSettings(data_dir=str(data)), metadata)

        async def scenario() -> tuple[BaseException | None, BaseException | None, BaseException | None]:
            async with runtime.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
                await conn.execute(sa.text("INSERT INTO t VALUES ('warm')"))
            filler = fill(data)
            # a transaction that writes nothing still succeeds on the full disk: not enough to tell
            async with runtime.engine.begin() as conn:
                await conn.execute(sa.text("SELECT 1"))
            errors: list[BaseException | None] = []
            for _ in range(2):
                try:
                    await runtime._probe_database()
                except Exception as exc:
                    errors.append(exc)
                else:
                    errors.append(None)
                if len(errors) == 1:
                    try:  # what a real write meets meanwhile
                        async with runtime.engine.begin() as conn:
                            await conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": "y" * 200_000})
                    except Exception as exc:
                        errors.append(exc)
                    filler.unlink()
            await runtime.engine.dispose()
            return errors[0], errors[1], errors[2]

        on_full, write_on_full, once_freed = asyncio.run(scenario())

    assert isinstance(on_full, OSError) and on_full.errno == errno.ENOSPC
    assert unavailable_dependency(on_full) == "database"
    assert write_on_full is not None and unavailable_dependency(write_on_full) == "database"
    assert once_freed is None
    assert not list(data.glob(".sip-disk-probe-*"))
