"""The import-linter contracts in pyproject.toml ([tool.importlinter]): they hold for the code as it
is, and each of them breaks on a new violating import (a copy of the packages with four such imports
added), so that `make lint` catches a service importing another, `shared` importing a service, a
domain module importing storage, or a module besides app.py importing the service's adapters.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

CONTRACTS = {
    "independence": "the services never import each other (they talk over RabbitMQ and HTTP)",
    "shared": "shared imports no service",
    "domain": "the services' domain modules import no adapters, no transport and no storage",
    "adapters": "only a service's app.py imports its adapters",
}

# one new import per contract: (module file, the line appended to it)
VIOLATIONS = {
    "independence": ("services/web/views.py", "from services.planning import domain"),
    "shared": ("shared/clock.py", "import services.notify.domain"),
    "domain": ("services/planning/domain.py", "import sqlalchemy"),
    "adapters": ("services/notify/gate.py", "from services.notify.adapters import store"),
}


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the packages under `root`, not the installed (editable) ones
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _status(output: str, contract: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith(contract + " "))
    return line.removeprefix(contract + " ").split()[0]


def test_the_contracts_hold() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in CONTRACTS.values():
        assert _status(result.stdout, contract) == "KEPT"


def test_each_contract_breaks_on_a_new_violation(tmp_path: Path) -> None:
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("shared", "services"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=skip)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for path, line in VIOLATIONS.values():
        with (tmp_path / path).open("a", encoding="utf-8") as f:
            f.write(f"\n{line}  # a violation added by tests/unit/test_layers.py\n")

    result = _lint_imports(tmp_path)

    assert result.returncode != 0, result.stdout + result.stderr
    for key, contract in CONTRACTS.items():
        assert _status(result.stdout, contract) == "BROKEN", (key, result.stdout)
    for path, _ in VIOLATIONS.values():
        module = path.removesuffix(".py").replace("/", ".")
        assert module in result.stdout, (module, result.stdout)
