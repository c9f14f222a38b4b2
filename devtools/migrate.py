"""Operate and develop the PostgreSQL migrations of one service.

.venv/bin/python -m devtools.migrate upgrade planning --url postgresql://…/planning
.venv/bin/python -m devtools.migrate current planning --url …
.venv/bin/python -m devtools.migrate history planning
.venv/bin/python -m devtools.migrate revision planning --url <empty or current db> -m "what changed"
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from alembic import command

from shared.migrations import alembic_config
from shared.persistence import normalise_database_url

if TYPE_CHECKING:
    from fastapi import FastAPI

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("planning", "consent", "notify")


def service_app(service: str, **settings: object) -> FastAPI:
    app_mod = importlib.import_module(f"services.{service}.app")
    settings_mod = importlib.import_module(f"services.{service}.settings")
    cls = next(v for k, v in vars(settings_mod).items() if k.endswith("Settings") and k != "ServiceSettings")
    return app_mod.create_app(
        cls(auth_required=False, directory_path=str(REPO / "config/directory.yaml"), **settings)
    )


def target_metadata(service: str) -> sa.MetaData:
    """The service's complete models (its tables plus the outbox and inbox), as its app builds them."""
    with tempfile.TemporaryDirectory() as tmp:
        return service_app(service, data_dir=tmp).state.runtime.metadata


def main() -> None:
    ap = argparse.ArgumentParser(description="sip-suite schema migrations (PostgreSQL)")
    ap.add_argument("action", choices=["upgrade", "current", "revision", "history"])
    ap.add_argument("service", choices=SERVICES)
    ap.add_argument("--url", help="the service's PostgreSQL URL")
    ap.add_argument("-m", "--message", default="change")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = service_app(args.service, data_dir=tmp).state.runtime.migrations
    cfg = alembic_config(directory, normalise_database_url(args.url) if args.url else None)
    if args.action == "upgrade":
        command.upgrade(cfg, "head")
    elif args.action == "current":
        command.current(cfg, verbose=True)
    elif args.action == "history":
        command.history(cfg)
    else:
        cfg.attributes["target_metadata"] = target_metadata(args.service)
        command.revision(cfg, message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
