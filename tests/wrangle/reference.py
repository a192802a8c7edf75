"""References computed directly with HF transformers (independent of the project's engine)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


@lru_cache(maxsize=4)
def hf_model(model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_label_logprobs(model_dir: Path, prompt: list[int], candidates: list[list[int]]) -> list[float]:
    """Total log-probability of each candidate after `prompt`, from HF logits."""
    model = hf_model(model_dir)
    totals = []
    with torch.no_grad():
        for candidate in candidates:
            ids = torch.tensor([prompt + candidate])
            logprobs = model(ids).logits[0].float().log_softmax(-1)  # [T, V]
            positions = range(len(prompt) - 1, len(prompt) + len(candidate) - 1)
            totals.append(sum(float(logprobs[pos, tok]) for pos, tok in zip(positions, candidate,
                                                                              strict=True)))
    return totals


def hf_greedy(model_dir: Path, prompt: list[int], max_new: int, eos: int) -> list[int]:
    """HF's greedy continuation of `prompt` (stops after `eos`)."""
    model = hf_model(model_dir)
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                         do_sample=False, eos_token_id=eos, pad_token_id=eos)
    return out[0, len(prompt):].tolist()
