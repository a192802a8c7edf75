"""Reusable page-aligned staging buffers for reads from the disk tier.

Every decode step reads the same disk-resident tensors again, so a fresh buffer per read would
churn hundreds of megabytes through the allocator per step: page faults on every read, and
freed chunks that the allocator's per-thread arenas keep but never hand back, so the process
holds far more than the ledger says. The pool keeps the buffers it made, by size, and hands
them out again. A buffer given back stays idle only while more buffers of its kind (a tensor's
shape and dtype) are lent out than lie idle: the next decoder layer's weights have this one's
shapes, so with the block schedule's overlap they reuse these buffers and the pool holds no
more than the schedule's own window; an embedding's or a head's buffers are freed at once, and
so is any buffer under `RETAIN_MIN` (cheap to make again; kept, it would only add idle pages). Every buffer it holds, lent out or idle,
is charged to the ledger until it is freed: the ledger charges what is really held.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Hashable

import torch

from engine.storage.disk import ALIGN, aligned_empty
from engine.storage.ledger import Ledger


RETAIN_MIN = 1 << 20


def padded_size(num_bytes: int) -> int:
    return -(-num_bytes // ALIGN) * ALIGN


class BufferPool:
    """Aligned uint8 buffers on `tier`, reused by size; thread-safe (I/O threads take them)."""

    def __init__(self, ledger: Ledger, tier: str = "device") -> None:
        self.ledger, self.tier = ledger, tier
        self._idle: dict[Hashable, list[torch.Tensor]] = defaultdict(list)
        self._lent: dict[Hashable, int] = defaultdict(int)  # buffers of each kind lent out now
        self._kinds: dict[int, Hashable] = {}  # data_ptr of a lent buffer -> its kind
        self._held = 0  # bytes of every buffer made and not freed (lent out or idle)
        self._lock = threading.Lock()

    def take(self, num_bytes: int, what: str, kind: Hashable = None) -> torch.Tensor:
        """A buffer of at least `num_bytes` ([padded] uint8, ALIGN-aligned) for a tensor of
        `kind`, reused if one of that kind is idle."""
        size = padded_size(num_bytes)
        key = (size, kind)
        with self._lock:
            if self._idle[key]:
                buffer = self._idle[key].pop()
            else:
                self.ledger.allocate(self.tier, size, f"staging buffer for {what}")
                self._held += size
                buffer = aligned_empty(size)
            self._lent[key] += 1
            self._kinds[buffer.data_ptr()] = key
        return buffer

    def give(self, buffer: torch.Tensor) -> None:
        """Return a buffer from `take`; the caller keeps no view of it."""
        with self._lock:
            key = self._kinds.pop(buffer.data_ptr())
            self._lent[key] -= 1
            idle = self._idle[key]
            if buffer.numel() >= RETAIN_MIN and len(idle) < self._lent[key]:  # may be reused
                idle.append(buffer)
                return
            drop = [buffer, *idle[self._lent[key] :]]
            del idle[self._lent[key] :]
            freed = sum(dropped.numel() for dropped in drop)
            self._held -= freed
            self.ledger.free(self.tier, freed)

    def trim(self) -> None:
        """Drop the idle buffers (their memory goes back to the system) and their charges."""
        with self._lock:
            freed = sum(buffer.numel() for buffers in self._idle.values() for buffer in buffers)
            self._idle.clear()
            self._held -= freed
            self.ledger.free(self.tier, freed)

    @property
    def held_bytes(self) -> int:
        return self._held
