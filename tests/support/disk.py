"""A small file system of its own, and filling it to the last byte (a full disk, for real)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(size_mb: int) -> Iterator[Path]:
    """A file system of ``size_mb`` of its own (tmpfs; mounting needs root)."""
    where = Path(tempfile.mkdtemp(prefix="sip-disk-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(where)],
                       capture_output=True, check=False)  # fmt: skip
    if r.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
        shutil.rmtree(where, ignore_errors=True)


def fill(where: Path) -> Path:
    """Take every free byte of ``where``'s file system (the services' writes then fail: ENOSPC)."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    return filler
