"""What happens at the head layer: the part that differs between generating, scoring and
computing a shared prefix. Each consumer gets a GPU batch and its last hidden states."""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.batch import GpuBatch
from engine.sampling import SamplingParams, process_logits, sample_next

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # hidden [..., C] -> logits [..., V] fp32


class Sampler:
    """Generation: sample the next token; rows leave on a stop id or at the length limit."""

    def __init__(
        self, params: SamplingParams, stop_ids: set[int], generator: torch.Generator | None
    ) -> None:
        self.params, self.stop_ids, self.generator = params, stop_ids, generator

    def extra_cols(self) -> int:
        return self.params.max_new_tokens

    def consume(self, batch: GpuBatch, hidden: torch.Tensor, logits_fn: LogitsFn) -> None:
        logits = logits_fn(hidden[:, -1])  # [B, V]
        if self.params.logits_processor is not None:
            logits = process_logits(self.params.logits_processor, batch.row_ids, batch.outputs,
                                    logits)
        next_ids = sample_next(logits, self.params, self.generator).cpu()  # [B]
        produced = len(batch.outputs[batch.row_ids[0]]) + 1
        done = torch.tensor([int(token) in self.stop_ids for token in next_ids], dtype=torch.bool)
        if produced >= self.params.max_new_tokens:
            done[:] = True
        batch.advance(next_ids, done)


class PrefixCapture:
    """A shared prefix: only its KV cache is wanted, so the head does nothing."""

    def extra_cols(self) -> int:
        return 0

    def consume(self, batch: GpuBatch, hidden: torch.Tensor, logits_fn: LogitsFn) -> None:
        batch.finish()


class Scorer:
    """Total log-probability of each candidate continuation after each prompt.

    Step 1 (the prompt) gives the first candidate token's log-probability; step 2 feeds every
    candidate to a copy of its row's cache (rows repeated, not recomputed) and sums the rest.
    """

    def __init__(self, candidates: list[list[int]]) -> None:
        self.candidates = candidates
        self.width = max(len(candidate) for candidate in candidates)
        self.scores: dict[int, list[float]] = {}

    def extra_cols(self) -> int:
        return self.width

    def consume(self, batch: GpuBatch, hidden: torch.Tensor, logits_fn: LogitsFn) -> None:
        if batch.row_ids and batch.row_ids[0] not in self.scores:
            self._first(batch, logits_fn(hidden[:, -1]).log_softmax(-1))  # [B, V]
        else:
            self._rest(batch, logits_fn(hidden).log_softmax(-1))  # [B*N, T, V]

    def _first(self, batch: GpuBatch, logprobs: torch.Tensor) -> None:
        firsts = torch.tensor([candidate[0] for candidate in self.candidates])  # [N]
        for row, row_id in enumerate(batch.row_ids):
            self.scores[row_id] = logprobs[row, firsts].tolist()
        if self.width == 1:
            batch.finish()
            return
        count = len(self.candidates)
        rows = torch.arange(len(batch.row_ids)).repeat_interleave(count)  # [B*N]
        ids = torch.zeros(len(rows), self.width, dtype=torch.long)
        for cand_idx, candidate in enumerate(self.candidates):
            ids[cand_idx::count, : len(candidate)] = torch.tensor(candidate)
        batch.feed(rows, ids, [len(self.candidates[idx % count]) for idx in range(len(rows))])

    def _rest(self, batch: GpuBatch, logprobs: torch.Tensor) -> None:
        count = len(self.candidates)
        for flat, row_id in enumerate(batch.row_ids):
            candidate = self.candidates[flat % count]
            follow = torch.tensor(candidate[1:], dtype=torch.long)  # tokens after the first
            steps = torch.arange(len(follow))
            self.scores[row_id][flat % count] += float(logprobs[flat, steps, follow].sum())
        batch.finish()
