"""promtool / amtool / alertmanager for the alert-rule tests: from PATH, else .venv-tools/ (``make tools``,
scripts/ensure-promtool.sh unpacks the Debian packages there; run here if it has not been)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".venv-tools"
#: where the tests' Alertmanager copy finds its default template (scripts/ensure-promtool.sh)
SHARE = "/tmp/.sip-suite-alertmanager-share"


def tool(name: str) -> str | None:
    """The path of ``name`` (promtool, amtool, prometheus-alertmanager), fetching it once if needed."""
    found = shutil.which(name) or _local(name)
    if found is None:
        subprocess.run(
            [str(REPO / "scripts/ensure-promtool.sh")], check=False, capture_output=True, timeout=300
        )
        found = shutil.which(name) or _local(name)
    return found


def _local(name: str) -> str | None:
    path = TOOLS / "bin" / name
    return str(path) if path.exists() else None
