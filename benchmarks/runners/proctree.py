"""Memory and disk reads of a process and its descendants (the peers run their model in child
processes: llama.cpp's server, vLLM's engine core). Standard library only: the llama.cpp runner
never imports torch (its RSS would be charged to the peer) and vLLM's runner lives in its venv.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

PROC = Path("/proc")


def status_kib(pid: int, keys: tuple[str, ...] = ("VmRSS", "VmHWM", "RssAnon", "RssFile"),
               proc: Path = PROC) -> dict[str, int]:
    """Fields of /proc/<pid>/status in bytes (missing: the process is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in (proc / str(pid) / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0]) * 1024
    return out


def pss_bytes(pid: int, proc: Path = PROC) -> int:
    """Proportional set size (shared pages split between their users), 0 when gone."""
    with contextlib.suppress(OSError, ValueError):
        for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def comm(pid: int, proc: Path = PROC) -> str:
    with contextlib.suppress(OSError):
        return (proc / str(pid) / "comm").read_text().strip()
    return "?"


def proc_io(pid: int, proc: Path = PROC) -> dict[str, int]:
    counters: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in (proc / str(pid) / "io").read_text().splitlines():
            key, _, value = line.partition(":")
            counters[key.strip()] = int(value)
    return counters


def children(pid: int, proc: Path = PROC) -> list[int]:
    """Direct children of pid, from every thread's `children` file."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in (proc / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(tok) for tok in (task / "children").read_text().split()]
    return sorted(set(found))


def descendants(pid: int, proc: Path = PROC) -> list[int]:
    out: list[int] = []
    todo = children(pid, proc)
    while todo:
        child = todo.pop()
        if child not in out:
            out.append(child)
            todo += children(child, proc)
    return out


class TreeSampler:
    """Polls a process tree: the peaks of its summed RSS and summed PSS, and each process's own
    high-water mark (VmHWM, kept as last seen so processes that exit early still count).

    Summed RSS counts shared library pages once per process (vLLM's engine core and its compile
    workers each map libtorch), so for a tree of torch processes the summed PSS is the honest
    total; for one big child (llama-server) the two agree."""

    def __init__(self, root_pid: int | None = None, interval_s: float = 0.2,
                 proc: Path = PROC) -> None:
        self.root_pid = root_pid or os.getpid()
        self.interval_s = interval_s
        self.proc = proc
        self.peak_sum_rss = 0
        self.peak_sum_pss = 0
        self.hwm: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        total = pss = 0
        for pid in [self.root_pid, *descendants(self.root_pid, self.proc)]:
            fields = status_kib(pid, proc=self.proc)
            total += fields.get("VmRSS", 0)
            pss += pss_bytes(pid, self.proc)
            if "VmHWM" in fields:
                self.hwm[pid] = max(self.hwm.get(pid, 0), fields["VmHWM"])
                self.names.setdefault(pid, comm(pid, self.proc))
        self.peak_sum_rss = max(self.peak_sum_rss, total)
        self.peak_sum_pss = max(self.peak_sum_pss, pss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def peak_bytes(self) -> int:
        """The tree's peak: the sampled summed PSS, and never below the largest process's own
        high-water mark (a peak between two samples)."""
        return max(self.peak_sum_pss, max(self.hwm.values(), default=0))

    def as_dict(self) -> dict:
        return {"peak_sum_pss_bytes": self.peak_sum_pss, "peak_sum_rss_bytes": self.peak_sum_rss,
                "hwm_bytes": {f"{self.names.get(pid, '?')}[{pid}]": hwm
                              for pid, hwm in sorted(self.hwm.items())}}
