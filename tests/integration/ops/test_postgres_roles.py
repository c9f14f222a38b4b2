"""The compose PostgreSQL's least privilege: one role per service owning only its own database.

deploy/postgres/initdb/10-service-roles.sh runs, as the postgres image runs it, against a private
cluster where every role but the superuser logs in with its password. Then each service's role can
connect to its own database and create and use tables there, cannot connect to another service's
database (nor the superuser's), holds no superuser/CREATEDB/CREATEROLE right, and the wrong
password is refused. deploy/postgres/entrypoint.sh refuses placeholder and weak passwords.
"""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest

from tests.support.compose_pg import password_cluster, run_entrypoint, run_initdb_scripts
from tests.support.private_pg import pg_bin

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.store_free,
    pytest.mark.skipif(pg_bin() is None, reason="no PostgreSQL server binaries (initdb, pg_ctl)"),
]

SERVICES = ("planning", "consent", "notify")


def strong() -> str:
    return secrets.token_hex(16)


def container_env(passwords: dict[str, str]) -> dict[str, str]:
    return {
        "POSTGRES_USER": "sip",
        "POSTGRES_PASSWORD": strong(),
        "POSTGRES_DB": "sip",
        **{f"POSTGRES_{s.upper()}_PASSWORD": passwords[s] for s in SERVICES},
    }


async def _connect(port: int, user: str, password: str, database: str) -> asyncpg.Connection:
    return await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=password, database=database)


def test_each_service_role_owns_only_its_own_database() -> None:
    passwords = {s: strong() for s in SERVICES}
    with password_cluster() as cluster:
        r = run_initdb_scripts(cluster, container_env(passwords))
        assert r.returncode == 0, r.stderr
        assert not any(pw in r.stdout + r.stderr for pw in passwords.values())

        async def check() -> None:
            for service in SERVICES:
                conn = await _connect(cluster.port, service, passwords[service], service)
                try:
                    await conn.execute("CREATE TABLE t_own (id int PRIMARY KEY, v text)")
                    await conn.execute("INSERT INTO t_own VALUES (1, 'x')")
                    assert await conn.fetchval("SELECT v FROM t_own WHERE id = 1") == "x"
                    row = await conn.fetchrow(
                        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls"
                        " FROM pg_roles WHERE rolname = current_user"
                    )
                    assert not any(row.values()), dict(row)
                    owner = await conn.fetchval(
                        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
                    )
                    assert owner == service
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(f'CREATE DATABASE "{service}_more"')
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute("CREATE ROLE intruder LOGIN")
                finally:
                    await conn.close()
                for other in (*[s for s in SERVICES if s != service], "sip"):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="CONNECT"):
                        await _connect(cluster.port, service, passwords[service], other)
                with pytest.raises(asyncpg.InvalidPasswordError):
                    await _connect(cluster.port, service, passwords[service] + "x", service)
            # another service's tables stay out of reach even by name through its own connection
            admin = await asyncpg.connect(
                host="127.0.0.1", port=cluster.port, user="postgres", database="planning"
            )
            try:
                assert await admin.fetchval("SELECT count(*) FROM t_own") == 1
                acl = await admin.fetchval("SELECT datacl::text FROM pg_database WHERE datname = 'planning'")
                assert "=c" not in acl.replace("planning=", ""), acl  # no CONNECT for PUBLIC ("=c/…")
            finally:
                await admin.close()

        asyncio.run(check())


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("POSTGRES_PASSWORD", "CHANGE_ME", "CHANGE_ME"),
        ("POSTGRES_PLANNING_PASSWORD", "CHANGE_ME", "CHANGE_ME"),
        ("POSTGRES_CONSENT_PASSWORD", "", "not set"),
        ("POSTGRES_NOTIFY_PASSWORD", "short-pw", "shorter than 16"),
        ("POSTGRES_NOTIFY_PASSWORD", "has space in it 12345", "may only hold"),
        ("POSTGRES_USER", "planning", "service's role name"),
    ],
)
def test_the_entrypoint_refuses_placeholder_and_weak_passwords(
    variable: str, value: str, message: str
) -> None:
    env = container_env({s: strong() for s in SERVICES})
    ok = run_entrypoint(env)
    assert ok.returncode == 0, ok.stderr
    env[variable] = value
    r = run_entrypoint(env, "sh", "-c", "echo started")
    assert r.returncode != 0
    assert message in r.stderr and "started" not in r.stdout


def test_the_entrypoint_execs_its_command_when_the_passwords_are_good() -> None:
    r = run_entrypoint(container_env({s: strong() for s in SERVICES}), "sh", "-c", "echo started")
    assert (r.returncode, r.stdout.strip()) == (0, "started")
