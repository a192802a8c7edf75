"""What memory this process may really use: the machine's available RAM, capped by the limits of
its memory cgroup (v1 or v2, the tightest of its ancestors), minus what the cgroup already holds.

A container or a `systemd-run -p MemoryMax=` job sees the whole machine's free RAM in
/proc/meminfo; planning budgets from that gets the process OOM-killed. Page cache counts in a
cgroup's usage but is reclaimable, so only anonymous memory is taken as used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
# What a process running the engine holds beside its tier budgets: the interpreter, torch,
# transformers, tokenizers, pyarrow and xgrammar imported, kernels warmed up (measured: 390 MB
# peak RSS on Linux x86-64, torch 2.13 CPU), thread stacks and allocator slack on top.
FIXED_OVERHEAD_BYTES = 512 * 2**20
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number near 2**63


@dataclass(frozen=True)
class CgroupMemory:
    limit: int  # bytes
    anon: int  # bytes of anonymous memory the cgroup holds now

    @property
    def free(self) -> int:
        return max(0, self.limit - self.anon)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    value = int(text)
    return None if value >= _UNLIMITED else value


def _stat_value(path: Path, keys: tuple[str, ...]) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    values = dict(line.split() for line in lines if len(line.split()) == 2)
    return next((int(values[key]) for key in keys if key in values), 0)


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """(/proc/self/cgroup) -> (v1 memory controller path, v2 unified path)."""
    v1 = v2 = None
    for line in proc_cgroup.splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            v1 = path
        elif hierarchy == "0" and controllers == "":
            v2 = path
    return v1, v2


def _tightest(base: Path, path: str, limit_file: str, stat_file: str,
              anon_keys: tuple[str, ...]) -> CgroupMemory | None:
    """The smallest limit among the cgroup at `path` and its ancestors, with that cgroup's anon."""
    best: CgroupMemory | None = None
    current = base / path.lstrip("/")
    while True:
        limit = _read_int(current / limit_file)
        if limit is not None and (best is None or limit < best.limit):
            best = CgroupMemory(limit, _stat_value(current / stat_file, anon_keys))
        if current == base or base not in current.parents:
            return best
        current = current.parent


def cgroup_memory(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> CgroupMemory | None:
    """This process's tightest memory cgroup limit, or None where it has none."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    v1, v2 = _cgroup_paths(proc_cgroup)
    if v1 is not None and (root / "memory").is_dir():
        found = _tightest(root / "memory", v1, "memory.limit_in_bytes", "memory.stat",
                          ("total_rss", "rss"))
        if found is not None:
            return found
    if v2 is not None:
        return _tightest(root, v2, "memory.max", "memory.stat", ("anon",))
    return None


def available_memory() -> int:
    """Bytes this process may still allocate: available RAM, capped by its cgroup."""
    available = psutil.virtual_memory().available
    cgroup = cgroup_memory()
    return available if cgroup is None else min(available, cgroup.free)
