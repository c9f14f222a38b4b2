"""Alembic environment of this service (the runtime and ``devtools.migrate`` both run it)."""

from shared.migrations import run_env

run_env()
