"""``sipctl prune [--service S] [--dry-run]``: run each service's retention once, on its own database.

The same pruner the service runs on its schedule (shared/retention.py; the kinds in each service's
``adapters/retention.py``), with the service's settings from the environment (``SIP_RETENTION_*``,
``<SERVICE>_DATABASE_URL`` / ``SIP_DATA_DIR``) — an audit retention below the law's five years is refused
here too. ``--dry-run`` counts what would be pruned and changes nothing. Prints the counts per kind
(never a row's content). The database must be the service's own, migrated by it (start it once).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SERVICES = ("planning", "consent", "notify")
REPO = Path(__file__).resolve().parents[1]


def add_parser(sub: Any, fn: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser("prune", help="run each service's retention once on its database (--dry-run: count)")
    p.add_argument("--service", choices=[*SERVICES, "all"], default="all")
    p.add_argument("--dry-run", action="store_true", help="count what would be pruned; change nothing")
    p.set_defaults(fn=fn)


def _pruner_app(service: str) -> Any:
    app_mod = importlib.import_module(f"services.{service}.app")
    settings_mod = importlib.import_module(f"services.{service}.settings")
    cls = next(v for k, v in vars(settings_mod).items() if k.endswith("Settings") and k != "ServiceSettings")
    directory = os.environ.get("SIP_DIRECTORY_PATH") or str(REPO / "config/directory.yaml")
    # no HTTP is served here: the app is built only for its store and pruner
    return app_mod.create_app(cls(auth_required=False, directory_path=directory))


async def prune(service: str, *, dry_run: bool) -> dict[str, int]:
    app = _pruner_app(service)
    try:
        counts: dict[str, int] = await app.state.pruner.prune_once(dry_run=dry_run)
        return counts
    finally:
        await app.state.runtime.engine.dispose()


def run(args: argparse.Namespace) -> int:
    failed = 0
    for service in SERVICES if args.service == "all" else (args.service,):
        try:
            counts = asyncio.run(prune(service, dry_run=args.dry_run))
        except Exception as exc:  # one service's database away: say so, go on with the others
            print(f"{service}: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
            failed = 1
            continue
        print(json.dumps({"service": service, "dry_run": args.dry_run, "pruned": counts}))
    return failed
