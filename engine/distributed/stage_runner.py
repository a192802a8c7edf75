"""A stage's side of the block schedule: `BlockRunner` over the stage's layers, whose two
boundary layers receive and send hidden states instead of computing; and GPU batches that
record what the head did to them, so that the other stages can replay it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from engine.batch import GpuBatch
from engine.distributed.links import StageLinks
from engine.distributed.split import RECV, SEND
from engine.runner import BlockRunner
from engine.storage import Lease

Transition = tuple  # ("advance", next_ids, done) | ("feed", rows, ids, lengths) | ("finish",)


@dataclass
class ReplayBatch(GpuBatch):
    """A GPU batch that logs its transitions; on the last stage the head makes them, the other
    stages `replay` them, so every stage holds the same rows, mask and positions."""

    transitions: list[Transition] = field(default_factory=list)

    def advance(self, next_ids: torch.Tensor, done: torch.Tensor) -> None:
        self.transitions.append(("advance", next_ids, done))
        super().advance(next_ids, done)

    def feed(self, rows: torch.Tensor, ids: torch.Tensor, lengths: list[int]) -> None:
        self.transitions.append(("feed", rows, ids, lengths))
        super().feed(rows, ids, lengths)

    def finish(self) -> None:
        self.transitions.append(("finish",))
        super().finish()

    def take_transitions(self) -> list[Transition]:
        taken, self.transitions = self.transitions, []
        return taken

    def replay(self, transitions: list[Transition]) -> None:
        for name, *args in transitions:
            getattr(GpuBatch, name)(self, *args)


class StageRunner(BlockRunner):
    """`BlockRunner` whose `recv` layer receives the previous stage's hidden state and whose
    `send` layer sends it on; the layers between are computed as in one process."""

    def __init__(self, *args, links: StageLinks, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.links = links
        self.group: list[int] = []  # the GPU batches of the pass being run
        self.boundary_s = 0.0  # seconds inside boundary "computes" (waiting, not computing)
        self._posted: dict[int, Lease] = {}  # batch -> receive buffer, transfer under way

    def compute(self, layer: int, batch_idx: int, weights: dict[str, Lease],
                cache: Lease | None, hidden: Lease | None) -> Lease | None:
        kind = self.layers[layer].kind
        if kind not in (RECV, SEND):
            return super().compute(layer, batch_idx, weights, cache, hidden)
        begin = time.perf_counter()
        try:
            if kind == RECV:
                return self._receive(layer, batch_idx)
            self._send(layer, batch_idx, hidden)
            return None
        finally:
            self.boundary_s += time.perf_counter() - begin

    def _shape(self, batch_idx: int) -> tuple[int, int, int]:
        batch = self.batches[batch_idx]
        rows, new_tokens = batch.ids.shape
        return (rows, new_tokens, self.cfg.hidden_size)

    def _post(self, batch_idx: int) -> None:
        what = f"hidden state of GPU batch {batch_idx} (arriving)"
        lease = self.tiers.empty(self._shape(batch_idx), self.dtype, what)
        self._posted[batch_idx] = lease
        self.links.post_recv(batch_idx, lease.tensor)

    def _receive(self, layer: int, batch_idx: int) -> Lease:
        """hidden [B, T, C] of `batch_idx` from the previous stage; the next batch of the pass
        is posted before waiting, so that its transfer overlaps this batch's compute."""
        if batch_idx not in self._posted:
            self._post(batch_idx)
        later = [idx for idx in self.group if idx > batch_idx and self.batches[idx].active]
        if later and later[0] not in self._posted:
            self._post(later[0])
        lease = self._posted.pop(batch_idx)
        self.links.wait_recv(batch_idx, lease.tensor,
                             f"the hidden state of GPU batch {batch_idx}")
        return lease

    def _send(self, layer: int, batch_idx: int, hidden: Lease) -> None:
        self.links.send_hidden(hidden.tensor, lambda: self.tiers.release(hidden))

    def release_posted(self) -> None:
        """Drop receive buffers still posted (a failed block)."""
        for lease in self._posted.values():
            self.tiers.release(lease)
        self._posted.clear()
