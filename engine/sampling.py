"""Sampling: pure functions from next-token logits to token ids.

`SamplingParams` is what a caller asks for; `sample_next` applies it to one decode step of a
batch. A per-row logits processor (constrained decoding plugs in here) runs before sampling;
`process_logits` calls it once per step instead where it also offers `process_batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

# (row_idx, generated_ids_so_far, logits[V]) -> logits[V]; may modify in place and return it.
LogitsProcessor = Callable[[int, Sequence[int], torch.Tensor], torch.Tensor]


@runtime_checkable
class BatchLogitsProcessor(Protocol):
    """A logits processor that also takes a whole step at once, the same as calling it row by
    row: (row ids [B], each row's generated ids, logits [B, V]) -> logits [B, V]."""

    def __call__(self, row_idx: int, generated: Sequence[int], logits: torch.Tensor
                 ) -> torch.Tensor: ...

    def process_batch(self, row_ids: Sequence[int], generated: Sequence[Sequence[int]],
                      logits: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k cut
    top_p: float = 1.0  # 1 means no nucleus cut
    seed: int | None = None
    stop_ids: tuple[int, ...] | None = None  # None: the model's EOS id(s)
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)
    logits_processor: LogitsProcessor | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """logits: [B, V]. Everything below the k-th largest value becomes -inf."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """logits: [B, V]. Keep the smallest set of tokens whose probability reaches top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
    cum_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum_probs - sorted_logits.softmax(dim=-1) >= top_p  # mass before token >= p
    drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


# Columns per block of `greedy_ids`' first pass.
ARGMAX_BLOCK = 128


def greedy_ids(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> [B] int64, exactly `logits.argmax(-1)` (the first of tied maxima; a
    NaN counts as the maximum), in two passes: the maximum of each block of ARGMAX_BLOCK
    columns (a vectorised reduction), then the argmax inside the first block that holds the
    row's maximum. On a CPU `argmax` over a 152k vocabulary is scalar code: 128 rows took
    25 ms per decode step, the two passes 5 ms."""
    B, V = logits.shape
    blocks = V // ARGMAX_BLOCK
    if blocks < 2 or logits.stride(-1) != 1:
        return logits.argmax(dim=-1)
    body = logits[:, : blocks * ARGMAX_BLOCK].view(B, blocks, ARGMAX_BLOCK)
    block_max = body.amax(dim=-1)  # [B, blocks]; a NaN propagates
    tail_start = blocks * ARGMAX_BLOCK
    if tail_start < V:  # the tail: one short block of its own
        tail = logits[:, tail_start:].amax(dim=-1, keepdim=True)
        block_max = torch.cat((block_max, tail), dim=-1)
    start = block_max.argmax(dim=-1) * ARGMAX_BLOCK  # [B]: the first block with the maximum
    columns = (start[:, None] + torch.arange(ARGMAX_BLOCK, device=logits.device)).clamp_(max=V - 1)
    # clamped columns repeat the last one after its own place: never an earlier first maximum
    return start + logits.gather(1, columns).argmax(dim=-1)


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """logits: [B, V] float32 -> next ids [B] (int64)."""
    if params.greedy:
        return greedy_ids(logits)
    logits = logits / params.temperature
    logits = apply_top_p(apply_top_k(logits, params.top_k), params.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def process_logits(processor: LogitsProcessor, row_ids: Sequence[int],
                   outputs: Mapping[int, Sequence[int]], logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] (row b is row `row_ids[b]`, whose generated ids are `outputs[row_id]`)
    after `processor`: one call where it is a `BatchLogitsProcessor`, else one per row."""
    if isinstance(processor, BatchLogitsProcessor):
        return processor.process_batch(row_ids, [outputs[row_id] for row_id in row_ids], logits)
    for row, row_id in enumerate(row_ids):
        logits[row] = processor(row_id, outputs[row_id], logits[row])
    return logits
