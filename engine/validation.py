"""Checks on prompts before any work: each error names the row."""

from __future__ import annotations

from collections.abc import Sequence

from engine.config import ModelConfig


def validate_prompts(
    prompts: Sequence[Sequence[int]], cfg: ModelConfig, max_new: int, what: str = "prompt"
) -> None:
    """`max_new`: columns that follow each prompt (new tokens, plus a shared prefix)."""
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise TypeError("prompts must be a list of token-id lists")
    for row, prompt in enumerate(prompts):
        if isinstance(prompt, str | bytes) or not isinstance(prompt, Sequence):
            raise TypeError(f"{what} at row {row} must be a list of token ids, got {type(prompt)}")
        if len(prompt) == 0:
            raise ValueError(f"{what} at row {row} is empty; give at least one token")
        bad = [token for token in prompt if not isinstance(token, int) or not 0 <= token < cfg.vocab_size]
        if bad:
            raise ValueError(
                f"{what} at row {row} has token id {bad[0]!r} outside the vocabulary "
                f"[0, {cfg.vocab_size})"
            )
        limit = cfg.max_positions - (max_new if cfg.family == "opt" else 0)
        if len(prompt) > limit:
            raise ValueError(
                f"{what} at row {row} has {len(prompt)} tokens; the model has "
                f"{cfg.max_positions} positions, so at most {limit} fit with "
                f"{max_new} more columns (new tokens and shared prefix)"
            )
