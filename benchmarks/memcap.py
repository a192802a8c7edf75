"""Honest offload measurements: a memory cap per run (cgroup v1) and page-cache eviction.

Without a cap, a 24 GiB box keeps a small model's "disk" tier in the page cache and offloading
measures nothing. A cgroup v1 memory limit charges page cache to the group, so reads inside it
stay at disk speed. Each run gets a fresh child of this process's own memory cgroup; the run's
process moves itself in before exec (`preexec`), and the group is removed afterwards.
Where cgroups are not writable, runs go uncapped with a warning recorded in the results.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")


def own_memory_cgroup(proc_cgroup: str | None = None) -> Path | None:
    """This process's cgroup v1 memory directory, from /proc/self/cgroup ("4:memory:/a/b")."""
    text = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    for line in text.splitlines():
        _, controllers, rel_path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_V1_MEMORY / rel_path.lstrip("/")
    return None


@dataclass
class MemoryCap:
    limit_bytes: int | None
    path: Path | None = None  # None: not capped (not asked for, or not permitted)
    warning: str | None = None

    def preexec(self) -> Callable[[], None] | None:
        """For subprocess.Popen(preexec_fn=...): the child joins the group before exec."""
        if self.path is None:
            return None
        procs = self.path / "cgroup.procs"
        return lambda: procs.write_text(str(os.getpid()))

    def usage(self) -> dict:
        out: dict = {"limit_bytes": self.limit_bytes, "capped": self.path is not None}
        if self.warning:
            out["warning"] = self.warning
        if self.path is None:
            return out
        for key, file_name in (("max_usage_bytes", "memory.max_usage_in_bytes"),
                               ("failcnt", "memory.failcnt")):
            with contextlib.suppress(OSError, ValueError):
                out[key] = int((self.path / file_name).read_text())
        with contextlib.suppress(OSError):
            oom = dict(line.split() for line in (self.path / "memory.oom_control").open())
            out["oom_kills"] = int(oom.get("oom_kill", 0))
        return out


@contextlib.contextmanager
def memory_cap(limit_bytes: int | None, name: str) -> Iterator[MemoryCap]:
    """A fresh cgroup with memory.limit_in_bytes = limit_bytes for one run (None: no cap)."""
    if limit_bytes is None:
        yield MemoryCap(None)
        return
    parent = own_memory_cgroup()
    path = parent / f"bench-{name}-{os.getpid()}" if parent is not None else None
    try:
        if path is None:
            raise OSError("no cgroup v1 memory controller in /proc/self/cgroup")
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
    except OSError as exc:
        message = f"memory cap of {limit_bytes} bytes not applied ({exc}); running uncapped"
        warnings.warn(message, stacklevel=2)
        _remove_cgroup(path)
        yield MemoryCap(limit_bytes, None, message)
        return
    try:
        yield MemoryCap(limit_bytes, path)
    finally:
        _remove_cgroup(path)


def _remove_cgroup(path: Path | None) -> None:
    """rmdir once the group is empty (its processes may take a moment to be reaped)."""
    if path is None or not path.exists():
        return
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    warnings.warn(f"could not remove cgroup {path}", stacklevel=2)


def evict_page_cache(paths: Iterable[Path]) -> int:
    """Drop these files (directories: every file below) from the page cache; -> bytes covered."""
    covered = 0
    for path in _files_below(paths):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)  # dirty pages are not dropped, so write them back first
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            covered += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return covered


def _files_below(paths: Iterable[Path]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (child for child in sorted(path.rglob("*")) if child.is_file())
