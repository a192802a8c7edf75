"""A prefill in row chunks (engine.model.chunks) gives what HF transformers gives, for every
family (sliding-window rings, a shared prefix, left padding, scoring), and its workspace is
one chunk's."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine import Engine, ModelConfig, Placement, Policy, SamplingParams
from engine.model import chunks, math
from engine.model.step import StepInputs
from engine.model.workspace import workspace_bytes
from tests.models import FAMILIES, NEW_FAMILIES, assert_engine_scores_match_hf, hf_greedy_many

P = Placement
# mixed lengths (left padding inside a GPU batch), longer than the families' windows of 6-10
PROMPTS = [list(range(10, 30)), [5, 6, 7], list(range(40, 51)), [9], list(range(60, 78)),
           list(range(20, 39))]
PREFIX = list(range(3, 20))
MAX_NEW = 5
POLICIES = {
    "all-device": Policy(6, 1, Placement.on("device"), Placement.on("device"),
                         Placement.on("device")),
    "mixed-cpu-attention": Policy(3, 2, P(50, 50, 0), P(0, 100, 0), Placement.on("device"),
                                  cpu_attention=True),
    # hidden states read from disk into pooled buffers, which a chunked prefill must not
    # write its output over
    "activations-on-disk": Policy(3, 2, Placement.on("device"), Placement.on("device"),
                                  Placement.on("disk")),
}


@pytest.fixture
def chunk_tokens(monkeypatch):
    """Chunks of 40 tokens: two rows of a 20-token prefill, one-row chunks at 39 columns."""
    monkeypatch.setattr(chunks, "CHUNK_TOKENS", 40)


def _generate(model_dir, policy, prompts, prefix=None):
    with Engine.from_pretrained(model_dir, policy=policy, dtype=torch.float32) as eng:
        return eng.generate(prompts, SamplingParams(max_new_tokens=MAX_NEW), prefix=prefix)


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("family", FAMILIES + NEW_FAMILIES)
def test_chunked_prefill_matches_hf(model_dirs, chunk_tokens, family, policy_name):
    model_dir = model_dirs(family)
    expected = hf_greedy_many(model_dir, PROMPTS, MAX_NEW)
    assert _generate(model_dir, POLICIES[policy_name], PROMPTS) == expected


@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3"])
def test_chunked_prefill_after_a_shared_prefix_matches_hf(model_dirs, chunk_tokens, family):
    model_dir = model_dirs(family)
    expected = hf_greedy_many(model_dir, [PREFIX + p for p in PROMPTS], MAX_NEW)
    assert _generate(model_dir, POLICIES["all-device"], PROMPTS, prefix=PREFIX) == expected


def test_chunked_scoring_matches_hf_logprobs(model_dirs, chunk_tokens):
    """The scorer's second pass feeds every candidate to a copy of its row: chunked too."""
    model_dir, prompts = model_dirs("gemma2"), PROMPTS[:4]
    candidates = [[30], [31, 32, 33], [40, 41]]
    assert_engine_scores_match_hf(model_dir, POLICIES["all-device"], prompts, candidates)


def test_a_chunk_sees_its_own_rows_of_the_step():
    valid = torch.ones(5, 12, dtype=torch.bool)
    valid[1, :4] = False  # left padding
    step = StepInputs.build(valid, 0, 9, window=4)
    part = step.select(slice(2, 4))
    assert torch.equal(part.positions, step.positions[2:4])
    assert torch.equal(part.mask, step.mask[2:4])
    assert torch.equal(part.window_mask, step.window_mask[2:4])
    ring, whole = part.ring, step.ring
    assert ring.rows.tolist() == [r - 2 for r in whole.rows.tolist() if 2 <= r < 4]
    assert ring.slots.tolist() == [s for r, s in zip(whole.rows.tolist(), whole.slots.tolist(),
                                                     strict=True) if 2 <= r < 4]
    assert torch.equal(ring.mask, whole.mask[2:4])


def test_workspace_is_one_chunks_plus_the_gathered_output(model_dirs):
    cfg = ModelConfig.from_pretrained(model_dirs("llama"))
    one_chunk = chunks.chunk_tokens(cfg, 4) // 64  # rows of 64 tokens in one chunk
    single = workspace_bytes(cfg, "decoder", one_chunk, 64, 64, 4)
    many = workspace_bytes(cfg, "decoder", 4 * one_chunk, 64, 64, 4)
    gathered = 4 * one_chunk * 64 * cfg.hidden_size * 4
    tables = 2 * one_chunk * 64 * cfg.rotary_dim * 4  # one chunk's rotary cos and sin
    assert many == single + gathered + 3 * tables  # the tables of every row, kept all step
    assert chunks.chunk_rows(4 * one_chunk, 1, chunks.chunk_tokens(cfg, 4)) == 4 * one_chunk


def test_rotary_tables_are_made_once_a_step_for_all_layers(model_dirs, chunk_tokens,
                                                           monkeypatch):
    made, steps = [], []  # steps: every (chunk of a) step a layer attended in, kept alive
    real_rotary, real_attention = math.rotary, math.attention
    monkeypatch.setattr(math, "rotary", lambda *args, **kw: made.append(1) or real_rotary(
        *args, **kw))
    monkeypatch.setattr(math, "attention", lambda cfg, w, x, kv, step, *rest, **kw: steps.append(
        step) or real_attention(cfg, w, x, kv, step, *rest, **kw))
    model_dir = model_dirs("llama")
    layers = ModelConfig.from_pretrained(model_dir).num_layers
    assert layers > 1
    with Engine.from_pretrained(model_dir, policy=POLICIES["all-device"], dtype=torch.float32
                                ) as eng:
        eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True))
    distinct = len({id(step) for step in steps})
    assert len(steps) == layers * distinct  # every layer of a step gets the same inputs
    assert len(made) == distinct  # and one rotary table for all of them


def test_a_chunks_widest_temporary_fits_the_chunk_bytes(model_dirs):
    """A wide MLP gets fewer tokens per chunk (halved from CHUNK_TOKENS, never below the
    minimum); a narrow one the most."""
    cfg = ModelConfig.from_pretrained(model_dirs("llama"))
    assert chunks.chunk_tokens(cfg, 2) == chunks.CHUNK_TOKENS  # a tiny model
    for width, itemsize, tokens in [(4864, 2, 512), (4864, 4, 256), (8192, 2, 512),
                                    (1 << 20, 2, chunks.MIN_CHUNK_TOKENS)]:
        wide = dataclasses.replace(cfg, intermediate_size=width)
        assert chunks.chunk_tokens(wide, itemsize) == tokens
