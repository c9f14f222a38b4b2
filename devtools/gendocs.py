"""Generate the AsyncAPI (messages) and OpenAPI (HTTP) documents of every service from the code.

``python -m devtools.gendocs``          write docs/asyncapi/<service>.json and docs/openapi/<service>.json
``python -m devtools.gendocs --check``  exit 1 if the committed documents differ from the code
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

from faststream.specification import AsyncAPI

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("planning", "consent", "notify")


def documents() -> dict[str, str]:
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in SERVICES:
            app_mod = importlib.import_module(f"services.{name}.app")
            settings_mod = importlib.import_module(f"services.{name}.settings")
            settings_cls = next(
                v for k, v in vars(settings_mod).items() if k.endswith("Settings") and k != "ServiceSettings"
            )
            settings = settings_cls(
                amqp_url="amqp://rabbitmq:5672/sip",
                data_dir=tmp,
                directory_path=str(REPO / "config/directory.yaml"),
                # documents describe the production shape: authentication on (a placeholder key)
                auth_required=True,
                jwt_hs256_secret="documentation-only-placeholder-secret",
            )
            app = app_mod.create_app(settings)
            spec = AsyncAPI(
                app.state.runtime.broker,
                title=f"sip-suite {name}",
                version=app.version,
                description=f"Messages the {name} service consumes and publishes.",
                schema_version="3.0.0",
            )
            asyncapi = json.loads(spec.to_specification().to_json())
            out[f"asyncapi/{name}.json"] = (
                json.dumps(asyncapi, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            )
            out[f"openapi/{name}.json"] = (
                json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            )
            app.state.runtime.engine.sync_engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    docs_dir = REPO / "docs"
    stale = []
    for rel, text in documents().items():
        path = docs_dir / rel
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run `make docs`): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
