"""What one forward step of one GPU batch needs besides weights: positions and the masks.

Rows are left-padded to a common length so that every row writes its new keys at the same
cache column. `valid` marks the cache columns that hold real tokens for each row.

A query at position p of a layer with a sliding window attends to positions p - window + 1
.. p (positions, not columns, so the window is exact across the padding between a shared
prefix and a prompt). Such a layer keeps a smaller cache when window < capacity, a ring: the
key of the token at position p (its rank among the row's real tokens) lives in slot p % window,
so the slot a new token overwrites never holds a key that a later query needs. A cache of full
capacity works too (`window_mask`); `LayerSpec.cache_columns` says which one a layer gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RingInputs:
    """How the sliding-window layers of one step read and write their ring caches."""

    size: int  # R: ring slots
    # where the new keys go: new token (rows[i], tokens[i]) is written to slot slots[i]
    rows: torch.Tensor
    tokens: torch.Tensor
    slots: torch.Tensor
    # write_first (a decode step, every row one real token): write, then attend over the ring
    # with mask [B, 1, 1, R]. Otherwise attend over [ring as it was | new keys] with mask
    # [B, 1, T, R + T] (or [B, 1, T, T] without the ring part when no row had cached keys)
    # and write afterwards, as later new tokens may overwrite slots earlier ones still need.
    write_first: bool
    read_ring: bool
    mask: torch.Tensor

    def select(self, rows: slice) -> RingInputs:
        """The same writes and mask for the batch rows `rows` only, renumbered from 0."""
        keep = (self.rows >= rows.start) & (self.rows < rows.stop)
        return RingInputs(self.size, self.rows[keep] - rows.start, self.tokens[keep],
                          self.slots[keep], self.write_first, self.read_ring, self.mask[rows])


@dataclass
class StepInputs:
    positions: torch.Tensor  # [B, T] int64, position of each new token within its own row
    mask: torch.Tensor  # [B, 1, T, S] bool, True where a query may attend to a key (global)
    start: int  # cache column where the T new tokens are written; S = start + T
    # layers with a sliding window, when it is shorter than the capacity: the mask over a
    # full-capacity cache [B, 1, T, S], and how to use a ring cache instead
    window_mask: torch.Tensor | None = None
    ring: RingInputs | None = None
    # what the step's layers share (`shared`), and its row slices (`select`): made once a step
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def shared(self, key: Any, make: Callable[[], Any]) -> Any:
        """`make()` on the first call with `key` in this step; the same object after it (the
        rotary tables, the same for every layer)."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def select(self, rows: slice) -> StepInputs:
        """The inputs of the batch rows `rows` (a contiguous run) as a batch of their own; the
        same object for the same rows all step, so what its layers share is made once."""
        return self.shared(("rows", rows.start, rows.stop), lambda: StepInputs(
            positions=self.positions[rows], mask=self.mask[rows], start=self.start,
            window_mask=None if self.window_mask is None else self.window_mask[rows],
            ring=None if self.ring is None else self.ring.select(rows),
        ))

    @classmethod
    def build(
        cls, valid: torch.Tensor, start: int, num_new: int, window: int | None = None
    ) -> StepInputs:
        """valid: [B, S_cap] bool, real-token columns (already set for the new tokens);
        window: the sliding window of the model's windowed layers, if it has any."""
        end = start + num_new
        keys = valid[:, :end]  # [B, S]
        ranks = keys.long().cumsum(dim=-1) - 1  # [B, S] rank among the row's real tokens
        query_cols = torch.arange(start, end, device=valid.device)  # [T]
        key_cols = torch.arange(end, device=valid.device)  # [S]
        causal = key_cols[None, :] <= query_cols[:, None]  # [T, S]
        mask = causal[None, None] & keys[:, None, None, :]  # [B, 1, T, S]
        # A padding query would see no key at all (a NaN row); let it see itself.
        mask |= (key_cols[None, :] == query_cols[:, None])[None, None]
        positions = ranks[:, start:end].clamp(min=0)
        if window is None or window >= valid.shape[1]:  # no row is long enough to slide
            return cls(positions=positions, mask=mask, start=start)
        near = positions[:, None, :, None] - ranks[:, None, None, :] < window  # [B, 1, T, S]
        return cls(positions=positions, mask=mask, start=start, window_mask=mask & near,
                   ring=_ring(valid, start, num_new, window, positions))


def _slot_positions(count: torch.Tensor, size: int) -> torch.Tensor:
    """count [B] keys written so far -> [B, R] position held by each slot (< 0: empty)."""
    last = count[:, None] - 1
    slots = torch.arange(size, device=count.device)
    return last - torch.remainder(last - slots, size)


def _ring(valid: torch.Tensor, start: int, num_new: int, window: int,
          positions: torch.Tensor) -> RingInputs:
    size = window
    new_real = valid[:, start : start + num_new]  # [B, T]
    before = valid[:, :start].sum(dim=-1)  # [B] real tokens already in the cache
    after = before + new_real.sum(dim=-1)
    # the last `size` real new tokens of each row are kept (distinct slots, as positions are)
    write = new_real & (positions >= (after - size)[:, None])
    rows, tokens = write.nonzero(as_tuple=True)
    slots = torch.remainder(positions[rows, tokens], size)
    if num_new == 1 and bool(new_real.all()):
        held = _slot_positions(after, size)  # [B, R], after this step's write
        mask = (held >= 0) & (positions - held < window)  # [B, R]
        return RingInputs(size, rows, tokens, slots, True, True, mask[:, None, None, :])
    steps = torch.arange(num_new, device=valid.device)
    gap = positions[:, :, None] - positions[:, None, :]  # [B, T, T] query minus key position
    new = (steps[None, :] <= steps[:, None])[None] & new_real[:, None, :] & (gap < window)
    new |= torch.eye(num_new, dtype=torch.bool, device=valid.device)[None]
    read_ring = bool(before.any())
    if read_ring:
        held = _slot_positions(before, size)  # [B, R], before this step
        old = (held >= 0)[:, None, :] & (positions[:, :, None] - held[:, None, :] < window)
        new = torch.cat((old, new), dim=-1)  # [B, T, R + T]
    return RingInputs(size, rows, tokens, slots, False, read_ring, new[:, None])
