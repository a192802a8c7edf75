"""Byte accounting per tier: what is allocated now, the peak, and the budget."""

from __future__ import annotations

import re
import threading
from collections import defaultdict

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class MemoryBudgetError(MemoryError):
    """An allocation would exceed a tier's budget."""


def parse_bytes(size: int | float | str) -> int:
    """`"2GiB"`, `"512 MB"`, `1e9` -> bytes."""
    if isinstance(size, int | float):
        if size < 0:
            raise ValueError(f"a memory size cannot be negative: {size}")
        return int(size)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", size)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read memory size {size!r}; write e.g. '2GiB', '512MB', 1e9")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num_bytes) < 1024:
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TiB"


class Ledger:
    """Thread-safe counters of bytes in use per tier, with peaks and budgets."""

    def __init__(self, budgets: dict[str, int]) -> None:
        self.budgets = dict(budgets)
        self.used: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.moved: dict[str, int] = defaultdict(int)  # "host->device" -> bytes
        self._lock = threading.Lock()

    def allocate(self, tier: str, num_bytes: int, what: str) -> None:
        with self._lock:
            new_used = self.used[tier] + num_bytes
            if new_used > self.budgets[tier]:
                raise MemoryBudgetError(
                    f"{what} needs {format_bytes(num_bytes)} on the {tier} tier, which has "
                    f"{format_bytes(self.budgets[tier] - self.used[tier])} left of its "
                    f"{format_bytes(self.budgets[tier])} budget"
                )
            self.used[tier] = new_used
            self.peak[tier] = max(self.peak[tier], new_used)

    def free(self, tier: str, num_bytes: int) -> None:
        with self._lock:
            self.used[tier] -= num_bytes

    def record_move(self, src: str, dst: str, num_bytes: int) -> None:
        with self._lock:
            self.moved[f"{src}->{dst}"] += num_bytes

    def reset_peaks(self) -> None:
        with self._lock:
            self.peak = defaultdict(int, self.used)
            self.moved.clear()
