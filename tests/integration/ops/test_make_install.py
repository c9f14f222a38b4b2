"""`make install` on a fresh clone works on a machine that has only python3, make and git — where the
system Python refuses `pip install` (PEP 668, Debian 12 / Ubuntu 24.04) and no uv is on PATH.

The machine is simulated: a Python "installation" whose stdlib directory (symlinks to the real one)
holds an EXTERNALLY-MANAGED marker — not a virtual environment, so pip really refuses — first on a
PATH from which every directory holding a `uv` is removed. Without `ensurepip` it is also Debian/Ubuntu
without the python3-venv package, where `python3 -m venv` fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.infra import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.store_free]


def _base_python() -> dict[str, str]:
    base = getattr(sys, "_base_executable", None) or sys.executable
    code = (
        "import sys, sysconfig, os, pip; print(sys.executable); print(sysconfig.get_path('stdlib')); "
        "print(os.path.dirname(pip.__path__[0])); print(sysconfig.get_config_var('LDLIBRARY') or '');"
        "print(sysconfig.get_config_var('LIBDIR') or '')"
    )
    out = subprocess.run([base, "-I", "-c", code], capture_output=True, text=True, check=True).stdout.split(
        "\n"
    )
    return dict(zip(("exe", "stdlib", "pip_home", "ldlibrary", "libdir"), out, strict=False))


def externally_managed_python(root: Path, *, ensurepip: bool) -> Path:
    """A python3 at root/bin that is a system installation marked EXTERNALLY-MANAGED (PEP 668)."""
    base = _base_python()
    stdlib = Path(base["stdlib"])
    (root / "bin").mkdir(parents=True)
    lib = root / "lib" / stdlib.name
    lib.mkdir(parents=True)
    python = root / "bin" / "python3"
    shutil.copy2(os.path.realpath(base["exe"]), python)
    if base["ldlibrary"] and (Path(base["libdir"]) / base["ldlibrary"]).exists():
        (root / "lib" / base["ldlibrary"]).symlink_to(Path(base["libdir"]) / base["ldlibrary"])
    for entry in stdlib.iterdir():
        if entry.name in ("site-packages", "dist-packages", "EXTERNALLY-MANAGED"):
            continue
        if entry.name == "ensurepip" and not ensurepip:
            continue
        (lib / entry.name).symlink_to(entry)
    (lib / "EXTERNALLY-MANAGED").write_text(
        "[externally-managed]\nError=This Python is managed by the system (a test's simulation).\n"
    )
    site = lib / "site-packages"
    site.mkdir()
    for entry in Path(base["pip_home"]).iterdir():  # the system's pip, nothing else
        if entry.name == "pip" or (entry.name.startswith("pip-") and entry.name.endswith("-info")):
            (site / entry.name).symlink_to(entry)
    return python


def fresh_machine_env(fake_python: Path) -> dict[str, str]:
    kept = [
        d for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not (Path(d) / "uv").exists() and "pyenv" not in d and not d.startswith(str(REPO))
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "PYENV", "UV_"))}
    if os.environ.get("UV_CACHE_DIR"):
        env["UV_CACHE_DIR"] = os.environ["UV_CACHE_DIR"]
    env["PATH"] = os.pathsep.join([str(fake_python.parent), *kept])
    return env


@pytest.mark.parametrize("venv_module", ["with-python3-venv", "without-python3-venv"])
def test_make_install_on_a_fresh_clone_without_uv_on_an_externally_managed_python(tmp_path, venv_module):
    fake = externally_managed_python(tmp_path / "system", ensurepip=venv_module == "with-python3-venv")
    env = fresh_machine_env(fake)
    assert shutil.which("uv", path=env["PATH"]) is None
    assert shutil.which("python3", path=env["PATH"]) == str(fake)
    # the simulation is faithful: this python3 refuses pip install, as Debian 12's does
    refused = subprocess.run(
        ["python3", "-m", "pip", "install", "--dry-run", "--no-index", "uv"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, refused.stderr
    if venv_module == "without-python3-venv":
        r = subprocess.run(["python3", "-m", "venv", str(tmp_path / "v")], env=env, capture_output=True)
        assert r.returncode != 0

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=60)
    r = subprocess.run(["make", "install"], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert (clone / ".venv" / "bin" / "python").exists()
    assert (clone / ".venv-bootstrap" / "bin" / "uv").exists()  # uv in the private place
    ok = subprocess.run([str(clone / ".venv/bin/python"), "-c", "import shared.auth, fastapi"], cwd=clone)
    assert ok.returncode == 0
    # nothing went into the "system" Python
    site = next((tmp_path / "system" / "lib").glob("python3*/site-packages"))
    assert sorted(p.name for p in site.iterdir() if not p.name.startswith("pip")) == []
    # a second make install is a no-op
    again = subprocess.run(
        ["make", "install"], cwd=clone, env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and "bootstrap-uv" not in again.stdout + again.stderr
