"""`Workload`: what a table asks of the engine, as the planner sees it.

Rows, the distribution of prompt lengths (token counts of each row's own prompt, after the
shared prefix), the shared prefix length and the new tokens per row. Nonsense fails at once
with a `ValueError` that says which field is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

# int: every row has this many tokens; {tokens: rows}: a histogram (counts are scaled to
# `rows`); [q0, ..., q1]: quantiles at evenly spaced levels from 0 (shortest) to 1 (longest).
PromptLengths = int | Mapping[int, int] | Sequence[int]


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_lengths(prompt_len: PromptLengths) -> None:
    if _is_int(prompt_len):
        values = [prompt_len]
    elif isinstance(prompt_len, Mapping):
        counts = list(prompt_len.values())
        if not counts or any(not _is_int(c) or c < 0 for c in counts) or sum(counts) == 0:
            raise ValueError(f"a prompt-length histogram needs counts >= 0, not all 0, got "
                             f"{prompt_len}")
        values = list(prompt_len)
    elif isinstance(prompt_len, Sequence) and not isinstance(prompt_len, str | bytes):
        values = list(prompt_len)
        if not values:
            raise ValueError("prompt-length quantiles must not be empty")
        if any(b < a for a, b in pairwise(values)):
            raise ValueError(f"prompt-length quantiles must not decrease: {values}")
    else:
        raise ValueError(f"prompt_len must be an int, a {{tokens: rows}} histogram or a list of "
                         f"quantiles, got {prompt_len!r}")
    if any(not _is_int(v) or v < 1 for v in values):
        raise ValueError(f"prompt lengths must be whole token counts >= 1, got {values}")


@dataclass(frozen=True)
class Workload:
    rows: int
    prompt_len: PromptLengths
    gen_len: int  # new tokens per row
    shared_prefix: int = 0  # tokens every row shares, computed once (not part of prompt_len)

    def __post_init__(self) -> None:
        if not _is_int(self.rows) or self.rows < 1:
            raise ValueError(f"Workload.rows must be a whole number >= 1, got {self.rows!r}")
        if not _is_int(self.gen_len) or self.gen_len < 1:
            raise ValueError(f"Workload.gen_len must be a whole number >= 1, got {self.gen_len!r}")
        if not _is_int(self.shared_prefix) or self.shared_prefix < 0:
            raise ValueError(
                f"Workload.shared_prefix must be a whole number >= 0, got {self.shared_prefix!r}")
        _check_lengths(self.prompt_len)

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], gen_len: int, shared_prefix: int = 0) -> Workload:
        """The exact histogram of a column's prompt lengths."""
        values, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
        histogram = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
        return cls(len(lengths), histogram, gen_len, shared_prefix)

    def lengths(self) -> np.ndarray:
        """[rows] int64 prompt lengths, longest first (the order the engine forms blocks in)."""
        if _is_int(self.prompt_len):
            return np.full(self.rows, int(self.prompt_len), dtype=np.int64)
        if isinstance(self.prompt_len, Mapping):
            return _from_histogram(self.prompt_len, self.rows)
        levels = np.linspace(0.0, 1.0, len(self.prompt_len))
        ranks = np.linspace(1.0, 0.0, self.rows) if self.rows > 1 else np.ones(1)
        quantiles = np.asarray(self.prompt_len, dtype=float)
        return np.ceil(np.interp(ranks, levels, quantiles)).astype(np.int64)

    @property
    def max_prompt_len(self) -> int:
        return int(self.lengths()[0])

    @property
    def mean_prompt_len(self) -> float:
        return float(self.lengths().mean())


def _from_histogram(histogram: Mapping[int, int], rows: int) -> np.ndarray:
    """Counts scaled to `rows` by largest remainder; every length with rows keeps at least one
    row when there is room, so the longest prompts are never rounded away."""
    values = np.array(sorted(histogram, reverse=True), dtype=np.int64)
    counts = np.array([histogram[int(v)] for v in values], dtype=float)
    share = counts / counts.sum() * rows
    whole = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - whole), kind="stable")
    whole[order[: rows - int(whole.sum())]] += 1
    if whole[0] == 0:  # keep the longest length represented: it sets the peak memory
        donor = int(np.argmax(whole))
        whole[donor] -= 1
        whole[0] = 1
    return np.repeat(values, whole)
