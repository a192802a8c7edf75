"""The state of one GPU batch while a block is generated: its rows, mask, outputs, caches.

Rows are left-padded to the batch's longest prompt. When rows finish they leave the batch: the
row selection is recorded in `keeps`, and each cache entry applies the selections it has not
seen the next time it is loaded, so finished rows cost no further compute or I/O.

A cache's columns grow with the rows' outputs (`grown_columns`): the batch's capacity is the
worst case (prompt + max_new_tokens; for extraction one token per character of the longest
answer the schema allows, ~350 for the demo's invoices, where rows stop after ~30), and a
cache allocated for all of it pays page faults and row-compaction copies for columns no row
reaches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.model import StepInputs
from engine.storage import Placed

MIN_FILL = 0.75  # a GPU batch's rows are at least this share of its longest prompt
# KV columns a fresh cache holds beyond the ones it needs at once; a cache that runs out is
# re-made with twice its columns (copies of written columns add up to under twice the last size)
GROW_COLUMNS = 64


def grown_columns(needed: int, capacity: int, current: int = 0) -> int:
    """Columns for a KV cache that must hold `needed` columns now and has `current`: the same
    while they suffice, else room to grow, never more than the batch's `capacity`."""
    if current >= needed:
        return current
    return min(capacity, max(needed + GROW_COLUMNS, 2 * current))


def cut_batches(rows: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Rows sorted by descending prompt length -> GPU batches of at most `batch_size` rows; a
    new batch starts where a prompt is shorter than `MIN_FILL` of its batch's longest, so
    left padding wastes under a quarter of any batch's prefill. The batches together never
    need more memory than `batch_size`-row batches of the longest prompt."""
    batches: list[list[int]] = []
    longest = 0
    for row, length in zip(rows, lengths, strict=True):
        if not batches or len(batches[-1]) == batch_size or length < MIN_FILL * longest:
            batches.append([])
            longest = length
        batches[-1].append(row)
    return batches


@dataclass
class CacheEntry:
    placed: Placed  # [2, B, K, S_cap, D]: keys and values of one layer for this batch
    version: int = 0  # how many of the batch's `keeps` it has applied


@dataclass
class GpuBatch:
    row_ids: list[int]  # input-order index of each active row
    ids: torch.Tensor  # [B, T] tokens to feed next (prompt at prefill, last token in decode)
    valid: torch.Tensor  # [B, S_cap] bool, columns holding real tokens
    start: int = 0  # cache column of ids[:, 0]
    outputs: dict[int, list[int]] = field(default_factory=dict)
    keeps: list[torch.Tensor] = field(default_factory=list)  # successive row selections
    caches: dict[int, CacheEntry] = field(default_factory=dict)  # layer -> entry
    step_inputs: StepInputs | None = None

    @classmethod
    def from_prompts(
        cls, row_ids: list[int], prompts: list[list[int]], extra_cols: int, prefix_len: int = 0
    ) -> GpuBatch:
        """Layout of each row: [shared prefix | left padding | prompt | `extra_cols` to fill]."""
        width = max(len(prompt) for prompt in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        valid = torch.zeros(len(prompts), prefix_len + width + extra_cols, dtype=torch.bool)
        valid[:, :prefix_len] = True
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            valid[row, prefix_len + width - len(prompt) : prefix_len + width] = True
        batch = cls(row_ids=list(row_ids), ids=ids, valid=valid, start=prefix_len)
        batch.outputs = {row_id: [] for row_id in row_ids}
        return batch

    @property
    def active(self) -> bool:
        return bool(self.row_ids)

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    def inputs(self, window: int | None) -> StepInputs:
        """Positions and mask for feeding `ids` (computed once per token, shared by layers)."""
        if self.step_inputs is None:
            self.step_inputs = StepInputs.build(self.valid, self.start, self.ids.shape[1], window)
        return self.step_inputs

    def advance(self, next_ids: torch.Tensor, done: torch.Tensor) -> None:
        """Record sampled ids [B]; rows with done [B] = True leave the batch."""
        for row, row_id in enumerate(self.row_ids):
            self.outputs[row_id].append(int(next_ids[row]))
        self.start += self.ids.shape[1]
        keep = (~done).nonzero().squeeze(-1)  # [B'] rows still generating
        if len(keep) < len(self.row_ids):
            self.keeps.append(keep)
            self.row_ids = [self.row_ids[row] for row in keep.tolist()]
            self.valid = self.valid[keep]
            next_ids = next_ids[keep]
        self.ids = next_ids[:, None]  # [B', 1]
        if self.row_ids:
            self.valid[:, self.start] = True
        self.step_inputs = None

    def finish(self) -> None:
        """Every row is done (prefix and scoring passes end after a fixed number of steps)."""
        self.row_ids = []

    def feed(self, rows: torch.Tensor, ids: torch.Tensor, lengths: list[int]) -> None:
        """Continue with row selection `rows` [B'] (repeats allowed) fed `ids` [B', T]; row r's
        first lengths[r] tokens are real, the rest right padding that nothing real attends to."""
        self.start += self.ids.shape[1]
        self.keeps.append(rows)
        self.row_ids = [self.row_ids[row] for row in rows.tolist()]
        self.valid = self.valid[rows]
        for row, length in enumerate(lengths):
            self.valid[row, self.start : self.start + length] = True
        self.ids = ids
        self.step_inputs = None

    def catch_up(self, entry: CacheEntry, cache: torch.Tensor, columns: int) -> torch.Tensor:
        """cache [2, B, K, S, D] with the row selections it has not seen applied (as one
        selection) and `columns` columns: S, or more, when its written ones (:start) are copied
        and the rest are zero."""
        rows = None
        if entry.version < len(self.keeps):
            keeps = [keep.to(cache.device) for keep in self.keeps[entry.version :]]
            rows = keeps[0]
            for keep in keeps[1:]:
                rows = rows[keep]  # successive selections compose into one
            entry.version = len(self.keeps)
        if columns == cache.shape[3]:
            return cache if rows is None else cache.index_select(1, rows)
        written = cache[:, :, :, : self.start]  # [2, B, K, start, D]
        if rows is not None:
            written = written.index_select(1, rows)  # [2, B', K, start, D]
        two, kept, heads, _, head_dim = written.shape
        grown = cache.new_zeros(two, kept, heads, columns, head_dim)
        grown[:, :, :, : self.start] = written
        return grown
