"""Tokenizer-free prompts: seeded random token ids, identical in every system's process.

Ids below FIRST_ORDINARY_ID are the families' special tokens (pad, bos, eos, unk) and never
appear, so no prompt holds an EOS or a pad id.
"""

from __future__ import annotations

import torch

FIRST_ORDINARY_ID = 4


def random_prompts(rows: int, prompt_len: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """rows prompts of exactly prompt_len ids each."""
    if rows < 1 or prompt_len < 1:
        raise ValueError(f"rows and prompt_len must be >= 1, got {rows}, {prompt_len}")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_ORDINARY_ID, vocab_size, (rows, prompt_len), generator=generator)
    return ids.tolist()


def wrangling_prompts(
    rows: int, prefix_len: int, median_row_len: int, vocab_size: int, seed: int = 0
) -> list[list[int]]:
    """Workload 3's shape: one shared instruction prefix, then a long-tailed (log-normal) row.

    Lengths are clipped to [4, 8 * median_row_len]; the tail is what length bucketing is for.
    """
    generator = torch.Generator().manual_seed(seed)
    prefix = torch.randint(FIRST_ORDINARY_ID, vocab_size, (prefix_len,), generator=generator)
    log_lens = torch.randn(rows, generator=generator) * 0.8  # sigma 0.8: a few rows 5-10x longer
    lengths = (median_row_len * log_lens.exp()).round().clamp(4, 8 * median_row_len).long()
    prompts = []
    for row_len in lengths.tolist():
        row = torch.randint(FIRST_ORDINARY_ID, vocab_size, (row_len,), generator=generator)
        prompts.append(prefix.tolist() + row.tolist())
    return prompts
