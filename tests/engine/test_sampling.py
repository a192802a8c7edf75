from __future__ import annotations

import pytest
import torch

from engine import Engine, Placement, Policy, SamplingParams
from engine.sampling import ARGMAX_BLOCK, apply_top_k, apply_top_p, greedy_ids, sample_next


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    assert torch.isinf(apply_top_k(logits, 2)).tolist() == [[True, False, True, False]]


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = ~torch.isinf(apply_top_p(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]


def test_greedy_is_argmax_and_sampling_respects_top_k():
    logits = torch.tensor([[0.0, 2.0, 1.0]] * 200)
    assert sample_next(logits, SamplingParams(), None).tolist() == [1] * 200
    params = SamplingParams(temperature=1.0, top_k=2, seed=0)
    drawn = sample_next(logits, params, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {1, 2}


@pytest.mark.parametrize("vocab", [5, ARGMAX_BLOCK, 2 * ARGMAX_BLOCK, 2 * ARGMAX_BLOCK + 1,
                                   1000, 32000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_ids_equal_argmax_with_ties_nans_and_infinities(vocab, dtype):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(12, vocab, generator=gen).to(dtype)
    last = vocab - 1
    logits[0, [1, last // 2, last]] = 50.0  # ties in different blocks: the first wins
    logits[1, [last, last // 3]] = float("nan")  # a NaN is the maximum, the first NaN wins
    logits[2] = 0.0  # all tied
    logits[3] = float("-inf")
    logits[4, last] = float("inf")
    logits[5, [0, last]] = 99.0
    logits[6, last] = 99.0  # the maximum in the tail block
    logits[7] = torch.arange(vocab, 0, -1)  # decreasing: column 0
    assert torch.equal(greedy_ids(logits), logits.argmax(dim=-1))
    strided = torch.randn(6, 2 * vocab, generator=gen)[:, ::2]
    assert torch.equal(greedy_ids(strided), strided.argmax(dim=-1))


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0},
                                 {"top_k": -2}])
def test_bad_params_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_seeded_sampling_is_reproducible_and_processor_applies(model_dirs):
    policy = Policy(2, 2, Placement.on("device"), Placement.on("host"), Placement.on("device"))
    banned = 7

    def ban(row_id, generated, logits):
        logits[banned] = float("-inf")
        return logits

    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3,
                            logits_processor=ban, ignore_eos=True)
    prompts = [[3, 4, 5], [9, 10], [11]]
    with Engine.from_pretrained(model_dirs("llama"), policy=policy, dtype=torch.float32) as eng:
        first, second = eng.generate(prompts, params), eng.generate(prompts, params)
    assert first == second
    assert all(banned not in out and len(out) == 6 for out in first)


class _BanPerStep:
    """A batch processor: bans one id in every row, one call per decode step."""

    def __init__(self, banned: int) -> None:
        self.banned, self.steps = banned, []

    def __call__(self, row_id, generated, logits):
        raise AssertionError("a batch processor is called once per step, not per row")

    def process_batch(self, row_ids, generated, logits):
        assert logits.shape[0] == len(row_ids) == len(generated)
        assert all(len(ids) == len(generated[0]) for ids in generated)
        self.steps.append(list(row_ids))
        logits[:, self.banned] = float("-inf")
        return logits


def test_a_batch_processor_takes_each_step_in_one_call(model_dirs):
    policy = Policy(2, 2, Placement.on("device"), Placement.on("host"), Placement.on("device"))
    processor = _BanPerStep(banned=7)
    params = SamplingParams(max_new_tokens=5, logits_processor=processor, ignore_eos=True)
    prompts = [[3, 4, 5], [9, 10], [11], [7, 7]]
    with Engine.from_pretrained(model_dirs("llama"), policy=policy, dtype=torch.float32) as eng:
        outputs = eng.generate(prompts, params)
    assert all(7 not in out and len(out) == 5 for out in outputs)
    assert sorted(row for step in processor.steps for row in step) == sorted(list(range(4)) * 5)
    assert max(len(step) for step in processor.steps) == 2  # a GPU batch's rows in one call
