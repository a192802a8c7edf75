"""KV caches that grow with the rows' outputs (engine.batch.grown_columns) give what HF
transformers gives, under every kind of placement, with rows stopping early, a shared prefix,
sliding-window rings and scoring; and they hold only the columns the rows have reached."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, Placement, Policy, SamplingParams
from engine import batch as batch_module
from engine.batch import GpuBatch, grown_columns
from engine.storage import tiers as tiers_module
from tests.models import (
    FAMILIES,
    NEW_FAMILIES,
    assert_engine_scores_match_hf,
    hf_greedy,
    hf_greedy_many,
)

P = Placement
ON_DEVICE = Placement.on("device")
PROMPTS = [list(range(10, 30)), [5, 6, 7], list(range(40, 51)), [9], list(range(60, 78))]
PREFIX = list(range(3, 20))
MAX_NEW = 12
POLICIES = {
    "all-device": Policy(5, 1, ON_DEVICE, ON_DEVICE, ON_DEVICE),
    "mixed-everything": Policy(2, 3, P(30, 30, 40), P(30, 40, 30), P(40, 30, 30)),
    "disk-cache-no-overlap": Policy(3, 2, P(0, 100, 0), Placement.on("disk"), ON_DEVICE,
                                    overlap=False),
    "cpu-attention-host-cache": Policy(3, 2, P(50, 50, 0), P(0, 100, 0), ON_DEVICE,
                                       cpu_attention=True),
}


@pytest.fixture
def grow_every_step(monkeypatch):
    """A fresh cache holds one column more than it needs: it is re-made every other step."""
    monkeypatch.setattr(batch_module, "GROW_COLUMNS", 1)


def _generate(model_dir, policy, prompts, max_new=MAX_NEW, prefix=None, stop=None):
    params = SamplingParams(max_new_tokens=max_new, **({} if stop is None else {"stop_ids": (stop,)}))
    with Engine.from_pretrained(model_dir, policy=policy, dtype=torch.float32) as eng:
        return eng.generate(prompts, params, prefix=prefix)


def test_columns_grow_by_doubling_up_to_the_capacity():
    assert grown_columns(needed=20, capacity=100) == 20 + batch_module.GROW_COLUMNS
    assert grown_columns(needed=20, capacity=30) == 30
    assert grown_columns(needed=21, capacity=100, current=21) == 21  # still enough
    grow = batch_module.GROW_COLUMNS
    assert grown_columns(needed=22, capacity=1000, current=21) == 22 + grow
    assert grown_columns(needed=301, capacity=1000, current=300) == 600  # doubled
    assert grown_columns(needed=90, capacity=100, current=84) == 100


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("family", ["llama", "opt"])
def test_growing_caches_match_hf_under_every_placement(model_dirs, grow_every_step, family,
                                                       policy_name):
    model_dir = model_dirs(family)
    expected = hf_greedy_many(model_dir, PROMPTS, MAX_NEW)
    assert _generate(model_dir, POLICIES[policy_name], PROMPTS) == expected


@pytest.mark.parametrize("family", FAMILIES + NEW_FAMILIES)
def test_growing_caches_change_nothing_for_every_family(model_dirs, monkeypatch, family):
    model_dir = model_dirs(family)
    whole = _generate(model_dir, POLICIES["all-device"], PROMPTS)  # as wide as the capacity
    monkeypatch.setattr(batch_module, "GROW_COLUMNS", 1)
    assert _generate(model_dir, POLICIES["all-device"], PROMPTS) == whole
    if family != "phi3":  # rows past position 16 re-encode in HF's Phi-3 (docs/models.md)
        assert whole == hf_greedy_many(model_dir, PROMPTS, MAX_NEW)


def test_growing_4bit_caches_change_nothing(model_dirs, monkeypatch):
    """4-bit caches (groups along the head dim) are re-quantized at their new width: the
    columns they had keep their codes."""
    model_dir = model_dirs("llama")
    policy = Policy(3, 2, P(50, 50, 0), P(0, 50, 50), ON_DEVICE, compress_cache=True)
    whole = _generate(model_dir, policy, PROMPTS)
    monkeypatch.setattr(batch_module, "GROW_COLUMNS", 1)
    assert _generate(model_dir, policy, PROMPTS) == whole


@pytest.mark.parametrize("policy_name", ["all-device", "disk-cache-no-overlap"])
def test_rows_stopping_early_while_caches_grow(model_dirs, grow_every_step, policy_name):
    """Rows leave the batch at different steps: a cache that must both drop rows and grow
    does both in one copy."""
    model_dir = model_dirs("qwen2")
    stop = hf_greedy(model_dir, PROMPTS[1], 4, stop_id=-1)[3]  # row 1's fourth token
    expected = [hf_greedy(model_dir, p, MAX_NEW, stop_id=stop) for p in PROMPTS]
    assert any(len(out) < MAX_NEW for out in expected)
    got = _generate(model_dir, POLICIES[policy_name], PROMPTS, stop=stop)
    assert got == expected


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_growing_caches_after_a_shared_prefix(model_dirs, grow_every_step, family):
    model_dir = model_dirs(family)
    expected = hf_greedy_many(model_dir, [PREFIX + p for p in PROMPTS], MAX_NEW)
    got = _generate(model_dir, POLICIES["all-device"], PROMPTS, prefix=PREFIX)
    assert got == expected


def test_scoring_with_growing_caches(model_dirs, grow_every_step):
    model_dir, prompts = model_dirs("gemma2"), PROMPTS[:4]
    candidates = [[30], [31, 32, 33], [40, 41]]
    assert_engine_scores_match_hf(model_dir, POLICIES["all-device"], prompts, candidates)


def test_unwritten_columns_are_never_read(model_dirs, grow_every_step, monkeypatch):
    """Fresh caches filled with NaN instead of zeros: any read of a column no step wrote
    would turn the outputs to garbage."""
    real_empty = tiers_module.Tiers.empty

    def poisoned(self, shape, dtype, what):
        lease = real_empty(self, shape, dtype, what)
        if what.startswith("KV cache"):
            lease.tensor.fill_(float("nan"))
        return lease

    monkeypatch.setattr(tiers_module.Tiers, "empty", poisoned)
    real_catch_up = GpuBatch.catch_up

    def poisoned_catch_up(self, entry, cache, columns=None):
        out = real_catch_up(self, entry, cache, columns)
        if columns is not None and columns > self.start and out is not cache:
            out[:, :, :, self.start :] = float("nan")
        return out

    monkeypatch.setattr(GpuBatch, "catch_up", poisoned_catch_up)
    model_dir = model_dirs("llama")
    expected = hf_greedy_many(model_dir, PROMPTS, MAX_NEW)
    assert _generate(model_dir, POLICIES["all-device"], PROMPTS) == expected


def test_a_cache_holds_only_the_columns_its_rows_reached(model_dirs, monkeypatch):
    """With a generous max_new_tokens and rows that stop early, no KV cache is made wider than
    the prompt and its room to grow, far from the capacity (prompt + 40 columns)."""
    monkeypatch.setattr(batch_module, "GROW_COLUMNS", 4)
    model_dir = model_dirs("qwen2")
    stop = hf_greedy(model_dir, PROMPTS[1], 2, stop_id=-1)[1]
    widths = []
    real_adopt, real_empty = tiers_module.Tiers.adopt, tiers_module.Tiers.empty

    def recording_empty(self, shape, dtype, what):
        if what.startswith("KV cache"):
            widths.append(shape[3])
        return real_empty(self, shape, dtype, what)

    def recording_adopt(self, tensor, what):
        if what.startswith("KV cache"):
            widths.append(tensor.shape[3])
        return real_adopt(self, tensor, what)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiers_module.Tiers, "empty", recording_empty)
        patch.setattr(tiers_module.Tiers, "adopt", recording_adopt)
        outs = _generate(model_dir, POLICIES["all-device"], [PROMPTS[1]] * 3, max_new=40,
                         stop=stop)
    assert all(len(out) == 2 for out in outs)
    assert widths and max(widths) == len(PROMPTS[1]) + 4
