"""Pipeline stages give the single-process engine's (and so HF's) outputs, token for token.

One staged engine per module fixture (spawning stage processes costs seconds): weights on
disk in one stage and in RAM in another (given policies), or each stage planning for its own
budgets (policy="auto"); mixed prompt lengths, rows stopping early, scoring, a shared prefix,
calls from two threads, and each stage's peaks within its own budgets.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from engine import Engine, Placement, Policy, SamplingParams
from engine.storage import parse_bytes
from tests.models import hf_greedy_many, hf_logprob_scores

PROMPTS = [[5, 6, 7], list(range(10, 21)), [9], [40, 41, 42, 43], [3, 4, 5, 6, 7, 8], [11],
           [60, 61, 62, 63, 64, 65, 66, 67], [70, 71]]
PREFIX = [20, 21, 22, 23, 24, 25]
CANDIDATES = [[30], [31, 32, 33], [40, 41]]
MEMORY = {"device": "4MiB", "host": "4MiB", "disk": "64MiB"}
TIGHT = {"device": "200KiB", "host": "1MiB", "disk": "64MiB"}  # for the planner to work around
ROOMY = {"device": "1MiB", "host": "1MiB", "disk": "64MiB"}
ON_DISK = Placement(0, 0, 100)
IN_RAM = Placement(0, 100, 0)
MIXED = Placement(30, 40, 30)


def _policy(shape: tuple[int, int], weights: Placement) -> Policy:
    return Policy(*shape, weights=weights, cache=MIXED, activations=Placement(40, 30, 30))


# (family, stages, block shape, weights of each stage or None for "auto", memory of each
# stage); the other pairings run with -m slow
SETUPS = {
    "opt-2": ("opt", 2, (2, 2), [ON_DISK, IN_RAM], [MEMORY] * 2),
    "llama-3-auto": ("llama", 3, None, None, [TIGHT, ROOMY, ROOMY]),
}
SLOW_SETUPS = {
    "opt-3": ("opt", 3, (2, 3), [MIXED, ON_DISK, IN_RAM], [MEMORY] * 3),
    "llama-3": ("llama", 3, (2, 3), [IN_RAM, ON_DISK, MIXED], [MEMORY] * 3),
    "llama-2": ("llama", 2, (3, 2), [ON_DISK, IN_RAM], [MEMORY] * 2),
}
PARAMS = [pytest.param(name, id=name) for name in SETUPS] + [
    pytest.param(name, id=name, marks=pytest.mark.slow) for name in SLOW_SETUPS]


@pytest.fixture(scope="module", params=PARAMS)
def staged(request, model_dirs, tmp_path_factory):
    """The staged engine, the single-process engine, and what the stages were given."""
    family, stages, shape, weights, memory = {**SETUPS, **SLOW_SETUPS}[request.param]
    model_dir = model_dirs(family)
    offload = tmp_path_factory.mktemp("stage-offload")
    policies = "auto" if weights is None else [_policy(shape, placement) for placement in weights]
    with Engine.from_pretrained(model_dir, policy=_policy(shape or (2, 2), MIXED),
                                dtype=torch.float32) as single:
        with Engine.from_pretrained(model_dir, policy=policies, dtype=torch.float32,
                                    memory=memory, offload_dir=offload, stages=stages) as eng:
            yield SimpleNamespace(model_dir=model_dir, eng=eng, single=single, memory=memory,
                                  auto=weights is None)
    assert [path.name for path in offload.iterdir()] == []  # every stage's files removed


def test_generate_matches_hf(staged):
    model_dir, eng = staged.model_dir, staged.eng
    assert eng.generate(PROMPTS, SamplingParams(max_new_tokens=7)) == hf_greedy_many(
        model_dir, PROMPTS, 7)


def test_rows_stopping_early_leave_every_stage(staged):
    eng, single = staged.eng, staged.single
    free = single.generate(PROMPTS, SamplingParams(max_new_tokens=6, ignore_eos=True))
    stop = free[0][2]  # row 0 stops at its third token, others wherever the token comes
    params = SamplingParams(max_new_tokens=6, stop_ids=[stop])
    expected = single.generate(PROMPTS, params)
    assert len(expected[0]) <= 3 and any(len(out) == 6 for out in expected)
    assert eng.generate(PROMPTS, params) == expected


def test_calls_from_two_threads_take_turns(staged):
    eng, single = staged.eng, staged.single
    calls = [(PROMPTS, SamplingParams(max_new_tokens=4)),
             (PROMPTS[:3], SamplingParams(max_new_tokens=6))]  # answers that cannot be mixed up
    expected = [single.generate(*call) for call in calls]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda call: eng.generate(*call), calls))
    assert results == expected


def test_scores_match_hf(staged):
    model_dir, eng = staged.model_dir, staged.eng
    expected = hf_logprob_scores(model_dir, PROMPTS, CANDIDATES)
    got = eng.score(PROMPTS, CANDIDATES)
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-4)


def test_shared_prefix_generation_and_scores(staged):
    eng, single = staged.eng, staged.single
    params = SamplingParams(max_new_tokens=5)
    assert eng.generate(PROMPTS, params, prefix=PREFIX) == single.generate(
        PROMPTS, params, prefix=PREFIX)
    got = eng.score(PROMPTS, CANDIDATES, prefix=PREFIX)
    want = single.score(PROMPTS, CANDIDATES, prefix=PREFIX)
    assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5)


def test_each_stage_within_its_budgets_with_its_links_counted(staged):
    eng, memory = staged.eng, staged.memory
    stats = eng.stats
    stages = len(eng.slices)
    assert len(stats.stages) == stages
    for rank, stage in enumerate(stats.stages):
        assert stage["budgets"] == {tier: parse_bytes(size) for tier, size in memory[rank].items()}
        for tier, peak in stage["peak_bytes"].items():
            assert 0 <= peak <= stage["budgets"][tier], (rank, tier)
        if rank < stages - 1:
            assert stage["bytes_moved"][f"stage{rank}->stage{rank + 1}"] > 0
        else:
            assert all(stage["bytes_moved"][f"stage{rank}->stage{dst}"] > 0
                       for dst in range(stages - 1))  # sampled ids back to every stage
    on_disk = [rank for rank, policy in enumerate(eng.policies) if policy.weights == ON_DISK]
    assert all(stats.stages[rank]["bytes_moved"]["disk->device"] > 0 for rank in on_disk)
    assert stats.peak_bytes["device"] == sum(s["peak_bytes"]["device"] for s in stats.stages)
    assert stats.generated_tokens > 0 and stats.total_s > 0


def test_auto_plans_each_stage_for_its_budgets_in_one_block_shape(staged):
    if not staged.auto:
        pytest.skip("a setup with given policies")
    eng = staged.eng
    shapes = {(policy.gpu_batch_size, policy.num_gpu_batches) for policy in eng.policies}
    assert len(shapes) == 1
    first, second, _ = eng.policies  # stage 0's device budget is the tight one
    assert first.weights.device < second.weights.device
