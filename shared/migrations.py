"""Schema migrations (Alembic) for PostgreSQL; SQLite, the embedded default, is created from the models.

Each service owns its database and its migration history: ``services/<service>/migrations/versions``
(inside the package, so the installed image carries it). On
PostgreSQL a service upgrades its database to the newest revision when it starts, under an advisory
lock so replicas starting together take turns. Operators can run the same by hand:

    .venv/bin/python -m shared.migrations upgrade planning --url postgresql://…/planning
    .venv/bin/python -m shared.migrations current planning --url …
    .venv/bin/python -m shared.migrations revision planning -m "what changed"   # developers: autogenerate

``tests/integration/ops/test_migrations.py`` upgrades empty PostgreSQL databases and checks that the
models and the migrated schema do not differ, so a model change without a migration fails the tests.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("planning", "consent", "notify")


def migrations_dir(service: str) -> Path:
    import importlib

    package = importlib.import_module(f"services.{service}")
    return Path(package.__file__).resolve().parent / "migrations"  # type: ignore[arg-type]


def has_migrations(service: str) -> bool:
    return any((migrations_dir(service) / "versions").glob("*.py"))


def alembic_config(service: str, url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("script_location", str(migrations_dir(service)))
    cfg.set_main_option("version_locations", str(migrations_dir(service) / "versions"))
    cfg.attributes["service"] = service
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_to_head(sync_conn: sa.Connection, service: str) -> None:
    """Run inside the service's start-up transaction (``conn.run_sync``)."""
    if sync_conn.dialect.name == "postgresql":
        key = zlib.crc32(f"sip-suite:migrations:{service}".encode())
        sync_conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    cfg = alembic_config(service)
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def target_metadata(service: str) -> sa.MetaData:
    """The service's complete models (its tables plus the outbox and inbox), as its app builds them."""
    import importlib
    import tempfile

    app_mod = importlib.import_module(f"services.{service}.app")
    settings_mod = importlib.import_module(f"services.{service}.settings")
    settings_cls = next(
        v for k, v in vars(settings_mod).items() if k.endswith("Settings") and k != "ServiceSettings"
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_cls(
            data_dir=tmp, auth_required=False, directory_path=str(REPO / "config/directory.yaml")
        )
        app = app_mod.create_app(settings)
    return app.state.runtime.metadata


def main() -> None:
    ap = argparse.ArgumentParser(description="sip-suite schema migrations (PostgreSQL)")
    ap.add_argument("action", choices=["upgrade", "current", "revision", "history"])
    ap.add_argument("service", choices=SERVICES)
    ap.add_argument("--url", help="the service's PostgreSQL URL (postgresql+psycopg… or postgresql://)")
    ap.add_argument("-m", "--message", default="change")
    args = ap.parse_args()
    from shared.persistence import normalise_database_url

    url = normalise_database_url(args.url) if args.url else None
    cfg = alembic_config(args.service, url)
    if args.action == "upgrade":
        command.upgrade(cfg, "head")
    elif args.action == "current":
        command.current(cfg, verbose=True)
    elif args.action == "history":
        command.history(cfg)
    else:
        command.revision(cfg, message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
