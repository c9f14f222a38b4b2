#!/usr/bin/env python3
"""Put uv into a private directory (.venv-bootstrap/bin/uv) without touching the system Python.

`make install` runs this when no `uv` is on PATH. The system Python is never installed into: Debian 12
and Ubuntu 24.04 refuse it anyway (PEP 668, "externally-managed-environment").

1. a bootstrap virtual environment (`python3 -m venv`) and `pip install uv` inside it — honours the
   user's pip configuration (index, proxy, certificates);
2. where `python3 -m venv` cannot make one (Debian/Ubuntu without the python3-venv package: no
   ensurepip), the uv wheel for this platform is fetched from the package index (PEP 691 JSON, its
   sha256 checked) and the uv binary taken out of it.

Usage: python3 scripts/bootstrap-uv.py [DIR]   (prints the path of the uv binary)
Environment: SIP_UV_VERSION (default: the Dockerfile's), SIP_BOOTSTRAP_INDEX_URL (default PyPI).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

UV_VERSION = os.environ.get("SIP_UV_VERSION") or "0.13.8"  # tests/unit check the Dockerfile pins the same
INDEX = (os.environ.get("SIP_BOOTSTRAP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")


def say(text: str) -> None:
    print(f"bootstrap-uv: {text}", file=sys.stderr, flush=True)


def with_pip(target: Path) -> Path | None:
    if subprocess.run([sys.executable, "-m", "venv", "--clear", str(target)], capture_output=True).returncode:
        say("python3 -m venv could not make a virtual environment (python3-venv missing?)")
        return None
    py = target / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", f"uv=={UV_VERSION}"])
    uv = target / "bin" / "uv"
    if r.returncode or not uv.exists():
        say("pip could not install uv into the bootstrap environment")
        return None
    return uv


def _wheel_matches(filename: str) -> bool:
    system, machine = platform.system(), platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64" if system == "Linux" else "arm64"}.get(machine, machine)
    if not filename.endswith(".whl") or f"-{UV_VERSION}-" not in filename:
        return False
    if system == "Linux":
        libc = "musllinux" if platform.libc_ver()[0] != "glibc" else "manylinux"
        return libc in filename and arch in filename
    if system == "Darwin":
        return "macosx" in filename and arch in filename
    return False


def from_index(target: Path) -> Path:
    req = urllib.request.Request(f"{INDEX}/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    candidates = [f for f in files if _wheel_matches(f["filename"]) and not f.get("yanked")]
    if not candidates:
        raise SystemExit(
            f"bootstrap-uv: no uv {UV_VERSION} wheel for {platform.system()} {platform.machine()}"
        )
    wheel = candidates[0]
    say(f"downloading {wheel['filename']}")
    with urllib.request.urlopen(wheel["url"], timeout=300) as resp:
        data = resp.read()
    if hashlib.sha256(data).hexdigest() != wheel["hashes"]["sha256"]:
        raise SystemExit("bootstrap-uv: the downloaded uv wheel does not match its sha256")
    (target / "bin").mkdir(parents=True, exist_ok=True)
    uv = target / "bin" / "uv"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        [member] = [n for n in zf.namelist() if n.endswith(".data/scripts/uv")]
        uv.write_bytes(zf.read(member))
    uv.chmod(uv.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return uv


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".venv-bootstrap").resolve()
    uv = with_pip(target)
    if uv is None:
        shutil.rmtree(target, ignore_errors=True)
        uv = from_index(target)
    if subprocess.run([str(uv), "--version"], capture_output=True).returncode:
        raise SystemExit(f"bootstrap-uv: {uv} does not run")
    print(uv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
