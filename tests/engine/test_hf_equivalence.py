"""Greedy fp32 outputs equal HF transformers' `generate`, token for token, under every policy."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, Placement, Policy, SamplingParams
from tests.models import EOS, FAMILIES, hf_greedy

ALL_DEVICE = Placement.on("device")
POLICIES = {
    "all-device": Policy(4, 2, ALL_DEVICE, ALL_DEVICE, ALL_DEVICE),
    "all-host": Policy(3, 2, Placement.on("host"), Placement.on("host"), Placement.on("host")),
    "all-disk": Policy(2, 3, Placement.on("disk"), Placement.on("disk"), Placement.on("disk")),
    "mixed-weights": Policy(2, 2, Placement(20, 30, 50), ALL_DEVICE, ALL_DEVICE),
    "mixed-everything": Policy(
        2, 2, Placement(30, 30, 40), Placement(30, 40, 30), Placement(40, 30, 30)
    ),
    "mixed-no-overlap": Policy(
        3, 2, Placement(50, 0, 50), Placement(0, 50, 50), Placement(50, 50, 0), overlap=False
    ),
    "one-batch-disk-cache": Policy(8, 1, Placement(0, 100, 0), Placement.on("disk"), ALL_DEVICE),
    "row-per-batch": Policy(1, 4, Placement(0, 50, 50), ALL_DEVICE, Placement.on("host")),
    "cpu-attention-host-cache": Policy(
        3, 2, Placement(50, 50, 0), Placement(0, 100, 0), ALL_DEVICE, cpu_attention=True
    ),
    "big-block-no-overlap": Policy(16, 1, ALL_DEVICE, ALL_DEVICE, ALL_DEVICE, overlap=False),
}

# Mixed lengths, a one-token prompt, repeated rows.
PROMPTS = [[5, 6, 7], list(range(10, 23)), [30, 31, 32, 33, 34, 35, 36], [9], [40, 41, 42, 43, 44],
           [5, 6, 7], list(range(50, 61))]
MAX_NEW = 8


@pytest.fixture(scope="module")
def references(model_dirs):
    cache = {}

    def get(family: str) -> list[list[int]]:
        if family not in cache:
            cache[family] = [hf_greedy(model_dirs(family), p, MAX_NEW) for p in PROMPTS]
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy_name", ["mixed-everything", "all-disk"])
def test_matches_hf_for_every_family(model_dirs, references, family, policy_name):
    with Engine.from_pretrained(model_dirs(family), policy=POLICIES[policy_name],
                                dtype=torch.float32) as eng:
        assert eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW)) == references(family)


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("family", ["opt350", "llama"])
def test_matches_hf_for_every_policy(model_dirs, references, family, policy_name):
    with Engine.from_pretrained(model_dirs(family), policy=POLICIES[policy_name],
                                dtype=torch.float32) as eng:
        assert eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW)) == references(family)


def test_rows_stop_at_eos_independently(model_dirs):
    """A caller stop id that some rows hit early; the others keep going to the limit."""
    model_dir = model_dirs("llama")
    stop = hf_greedy(model_dir, PROMPTS[1], 3, stop_id=-1)[2]  # the token row 1 produces third
    expected = [hf_greedy(model_dir, p, 12, stop_id=stop) for p in PROMPTS]
    assert any(len(out) < 12 for out in expected) and any(len(out) == 12 for out in expected)
    with Engine.from_pretrained(model_dir, policy=POLICIES["mixed-everything"],
                                dtype=torch.float32) as eng:
        got = eng.generate(PROMPTS, SamplingParams(max_new_tokens=12, stop_ids=(stop,)))
    assert got == expected


def test_model_eos_stops_rows(model_dirs):
    with Engine.from_pretrained(model_dirs("opt"), policy=POLICIES["all-device"],
                                dtype=torch.float32) as eng:
        outs = eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW))
        forced = eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True))
    for out, full in zip(outs, forced, strict=True):
        assert len(full) == MAX_NEW
        if EOS in out:
            assert out[-1] == EOS and out == full[: len(out)]


def test_mixed_lengths_in_one_block_equal_alone(model_dirs):
    with Engine.from_pretrained(model_dirs("qwen2"), policy=POLICIES["mixed-weights"],
                                dtype=torch.float32) as eng:
        together = eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW))
        alone = [eng.generate([p], SamplingParams(max_new_tokens=MAX_NEW))[0] for p in PROMPTS]
    assert together == alone


def test_same_tokens_under_every_policy(model_dirs):
    outputs = []
    for policy in POLICIES.values():
        with Engine.from_pretrained(model_dirs("llama_tied"), policy=policy,
                                    dtype=torch.float32) as eng:
            outputs.append(eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW)))
    assert all(out == outputs[0] for out in outputs)


def test_bf16_runs_and_mostly_agrees(model_dirs):
    """bf16 is the fast path of CPUs that multiply it in hardware; it is not bit-exact with
    fp32, but must run and be sane on any CPU."""
    with Engine.from_pretrained(model_dirs("llama"), policy=POLICIES["mixed-everything"],
                                dtype=torch.bfloat16) as eng:
        outs = eng.generate(PROMPTS, SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert all(len(out) == 4 for out in outs)
