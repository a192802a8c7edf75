"""A shared prefix and candidate scoring give what HF gives on the full sequences."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, Placement, Policy, SamplingParams
from tests.models import hf_greedy, hf_logprob_scores

PREFIX = [20, 21, 22, 23, 24, 25]
PROMPTS = [[5, 6, 7], list(range(10, 21)), [9], [40, 41, 42, 43]]
CANDIDATES = [[30], [31, 32, 33], [40, 41]]
POLICY = Policy(2, 2, Placement(30, 30, 40), Placement(30, 40, 30), Placement(40, 30, 30))


@pytest.mark.parametrize("family", ["opt350", "llama", "qwen2"])
def test_prefix_generation_matches_hf(model_dirs, family):
    model_dir = model_dirs(family)
    expected = [hf_greedy(model_dir, PREFIX + p, 6) for p in PROMPTS]
    with Engine.from_pretrained(model_dir, policy=POLICY, dtype=torch.float32) as eng:
        assert eng.generate(PROMPTS, SamplingParams(max_new_tokens=6), prefix=PREFIX) == expected


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_scores_match_hf_logprobs(model_dirs, family):
    model_dir = model_dirs(family)
    expected = hf_logprob_scores(model_dir, [PREFIX + p for p in PROMPTS], CANDIDATES)
    with Engine.from_pretrained(model_dir, policy=POLICY, dtype=torch.float32) as eng:
        with_prefix = eng.score(PROMPTS, CANDIDATES, prefix=PREFIX)
        without = eng.score([PREFIX + p for p in PROMPTS], CANDIDATES)
    for got in (with_prefix, without):
        assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-4)


def test_score_rejects_empty_candidates(model_dirs):
    with Engine.from_pretrained(model_dirs("opt"), policy=POLICY, dtype=torch.float32) as eng:
        with pytest.raises(ValueError, match="candidates"):
            eng.score(PROMPTS, [[3], []])
