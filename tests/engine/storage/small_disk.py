"""Real file-system faults for the disk tier: a tiny tmpfs that fills up, remounted read-only.

Mounting needs root (CAP_SYS_ADMIN); where it is refused, a full disk is simulated by failing
`os.pwrite` with ENOSPC past the size, and read-only by `chmod` (which binds a non-root user).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _used_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


@contextlib.contextmanager
def small_disk(root: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on a file system of `size` bytes (a tmpfs; else a simulated quota)."""
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)):
        try:
            yield root
        finally:
            subprocess.run(["umount", "-l", str(root)], check=True)
        return
    real_pwrite = os.pwrite

    def pwrite(fd: int, data, offset: int) -> int:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if target.is_relative_to(root) and _used_bytes(root) + len(data) > size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    yield root


@contextlib.contextmanager
def read_only(root: Path) -> Iterator[None]:
    """`root` (a `small_disk`) read-only for the duration: remounted, or chmod-ed."""
    if os.path.ismount(root):
        assert _mount("-o", "remount,ro", str(root)), "cannot remount read-only"
        try:
            yield
        finally:
            assert _mount("-o", "remount,rw", str(root))
        return
    dirs = [root, *(path for path in root.rglob("*") if path.is_dir())]
    for path in dirs:
        path.chmod(0o500)
    try:
        yield
    finally:
        for path in dirs:
            path.chmod(0o700)
