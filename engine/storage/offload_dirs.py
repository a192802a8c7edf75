"""Offload directories: made with an owner record, and removed by the next engine when their
owner died without cleaning up (kill -9, OOM kill, power loss of the process).

Each engine's directory `flexgen-XXXX` holds `owner.json`: the pid and the kernel's start time
of the process that made it. A directory is stale only when it carries that record and its
process no longer exists (or the pid now belongs to a process started at another time). A
directory without the record, or whose owner is alive, is never touched: it may be another
program's, or a live engine's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "flexgen-"
OWNER_FILE = "owner.json"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)" start at field 3


def _alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True  # an unreadable record: leave it alone
    started = _start_time(pid)
    if started is not None:
        return started == owner.get("start")
    if not Path("/proc/self/stat").exists():  # no procfs: ask the kernel about the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return False


def make_offload_dir(parent: Path | None, prefix: str = PREFIX) -> Path:
    """A fresh `flexgen-*` directory (`prefix` starts with PREFIX) under `parent` (the system
    temp dir when None), with its owner record; first removes the stale ones it finds there."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    root = parent if parent is not None else Path(tempfile.gettempdir())
    remove_stale(root)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    record = {"pid": os.getpid(), "start": _start_time(os.getpid())}
    (path / OWNER_FILE).write_text(json.dumps(record))
    return path


@contextlib.contextmanager
def scratch_dir(parent: Path | None, prefix: str) -> Iterator[Path]:
    """A short-lived owned directory (the disk probe's): removed at the end, and by the next
    engine if this process is killed first."""
    path = make_offload_dir(parent, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale(root: Path) -> list[Path]:
    """Remove the offload directories under `root` whose owner process is gone."""
    removed = []
    for path in root.glob(f"{PREFIX}*"):
        try:
            owner = json.loads((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if not isinstance(owner, dict) or _alive(owner):
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed the offload directory %s of dead process %s", path, owner.get("pid"))
        removed.append(path)
    return removed
