"""On a GPU (skipped without one; `make gpu-check` runs them): greedy fp32 on CUDA equals HF
transformers' CPU reference with everything on the GPU and with weights, KV cache and hidden
states streamed from host RAM and disk; bf16 runs; the device tier's peak stays within its
budget."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, Placement, Policy, SamplingParams
from tests.models import hf_greedy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU (CUDA)")

GPU = Placement.on("device")
POLICIES = {
    "all-gpu": Policy(4, 2, GPU, GPU, GPU),
    "streamed": Policy(2, 2, Placement(30, 40, 30), Placement(30, 40, 30), Placement(50, 50, 0)),
    "cpu-attention": Policy(3, 2, Placement(50, 50, 0), Placement.on("host"), GPU,
                            cpu_attention=True),
}
PROMPTS = [[5, 6, 7], list(range(10, 23)), [9], [40, 41, 42, 43, 44]]
MAX_NEW = 6


@pytest.mark.parametrize("family", ["opt", "llama", "qwen2"])
@pytest.mark.parametrize("policy_name", list(POLICIES))
def test_fp32_on_the_gpu_equals_hf(model_dirs, family, policy_name):
    model_dir = model_dirs(family)
    expected = [hf_greedy(model_dir, prompt, MAX_NEW) for prompt in PROMPTS]
    with Engine.from_pretrained(model_dir, policy=POLICIES[policy_name], device="cuda",
                                dtype=torch.float32) as eng:
        assert eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW)) == expected


def test_bf16_on_the_gpu_runs_within_its_budget(model_dirs):
    budget = 64 * 1024**2
    with Engine.from_pretrained(model_dirs("llama"), policy=POLICIES["streamed"], device="cuda",
                                dtype=torch.bfloat16,
                                memory={"device": budget, "host": "1GiB", "disk": "1GiB"}) as eng:
        outs = eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True))
        assert eng.stats.peak_bytes["device"] <= budget
    assert all(len(out) == MAX_NEW for out in outs)
