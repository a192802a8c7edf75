"""Reusable page-aligned staging buffers for reads and writes of the disk tier.

Every decode step reads the same disk-resident tensors again, so a fresh buffer per read would
churn hundreds of megabytes through the allocator per step: page faults on every read, and
freed chunks that the allocator's per-thread arenas keep but never hand back, so the process
holds far more than the ledger says. The pool keeps every buffer it made until `trim` (the
engine trims at the end of each block), keyed by kind (a tensor's shape and dtype): a kind gets
as many buffers as were ever in use at once, and the next token's (or the next decoder
layer's) tensors of that kind reuse them. Every buffer it holds, lent out or idle, is charged
to the ledger until it is dropped: the ledger charges what is really held, and the planner's
peak replay (`engine.policy.peaks`) mirrors the same rule.

A KV cache changes shape within a block: it loses rows as they finish and gains columns as it
grows, and each new shape is a new kind. So the engine drops, after each token, the idle
buffers no take used during that token: kinds of shapes no tensor has any more do not pile up
until the block ends.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Hashable

import torch

from engine.storage.disk import aligned_empty, padded_size
from engine.storage.ledger import Ledger


class BufferPool:
    """Aligned uint8 buffers on `tier`, reused by kind; thread-safe (I/O threads take them)."""

    def __init__(self, ledger: Ledger, tier: str = "device") -> None:
        self.ledger, self.tier = ledger, tier
        self._idle: dict[Hashable, list[torch.Tensor]] = defaultdict(list)
        self._kinds: dict[int, Hashable] = {}  # data_ptr of a lent buffer -> its key
        self._used: set[Hashable] = set()  # keys taken since the last `drop_unused`
        self._lock = threading.Lock()

    def take(self, num_bytes: int, what: str, kind: Hashable) -> torch.Tensor:
        """A buffer of at least `num_bytes` ([padded] uint8, ALIGN-aligned) for a tensor of
        `kind`, reused if one of that kind is idle."""
        size = padded_size(num_bytes)
        key = (size, kind)
        with self._lock:
            if self._idle[key]:
                buffer = self._idle[key].pop()
            else:
                self.ledger.allocate(self.tier, size, f"staging buffer for {what}")
                buffer = aligned_empty(size)
            self._kinds[buffer.data_ptr()] = key
            self._used.add(key)
        return buffer

    def give(self, buffer: torch.Tensor) -> None:
        """Return a buffer from `take`; the caller keeps no view of it. It stays, idle, for
        the next `take` of its kind until `trim`."""
        with self._lock:
            self._idle[self._kinds.pop(buffer.data_ptr())].append(buffer)

    def forget_lent(self) -> None:
        """After an abandoned block, whose I/O has finished: a buffer still lent out belongs to
        a lease dropped unreleased (an interrupt between a `take` and its lease); its memory
        went with the lease, so its charge goes too."""
        with self._lock:
            freed = sum(size for size, _ in self._kinds.values())
            self._kinds.clear()
            self.ledger.free(self.tier, freed)

    def drop_unused(self) -> None:
        """Drop the idle buffers that no take has used since the last call (the engine calls
        it after each token): kinds of a shape no tensor has any more."""
        with self._lock:
            stale = [key for key in self._idle if key not in self._used]
            freed = sum(buffer.numel() for key in stale for buffer in self._idle.pop(key))
            self._used.clear()
            self.ledger.free(self.tier, freed)

    def trim(self) -> None:
        """Drop the idle buffers (their memory goes back to the system) and their charges."""
        with self._lock:
            freed = sum(buffer.numel() for buffers in self._idle.values() for buffer in buffers)
            self._idle.clear()
            self._used.clear()
            self.ledger.free(self.tier, freed)
