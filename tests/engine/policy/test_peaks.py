"""The cost model's peak bytes match what the engine's ledger measures (within 15%)."""

from __future__ import annotations

import random

import pytest
import torch

from engine import Engine, Placement, Policy, SamplingParams, Workload
from engine.model import layer_specs
from engine.policy import predict
from engine.policy.predict import predicted_disk_bytes

P = Placement
ON_DEVICE, ON_HOST, ON_DISK = P.on("device"), P.on("host"), P.on("disk")
BUDGETS = {"device": "64MiB", "host": "64MiB", "disk": "64MiB"}
TOLERANCE = 0.15

# (family, policy, prompt lengths, new tokens, shared prefix). With overlap on, stores to the
# host or disk finish on the I/O pool's time, so only cases whose peak that timing moves little
# run with overlap; the rest run in order, where the ledger is deterministic.
CASES = [
    ("opt", Policy(4, 2, ON_DEVICE, ON_DEVICE, ON_DEVICE), [12] * 8, 6, 0),
    ("opt", Policy(4, 2, ON_DISK, ON_DEVICE, ON_DEVICE), [12, 3, 9, 5, 7, 12, 1, 4], 6, 0),
    ("opt", Policy(4, 2, ON_HOST, ON_HOST, ON_HOST, overlap=False), [12] * 8, 6, 0),
    ("opt", Policy(4, 2, ON_DISK, ON_DISK, ON_DISK, overlap=False), [12] * 8, 6, 0),
    ("opt", Policy(2, 3, P(30, 30, 40), P(30, 40, 30), P(40, 30, 30), overlap=False),
     [5, 9, 13, 3, 7, 11, 4, 8], 5, 0),
    ("opt", Policy(4, 2, ON_HOST, ON_HOST, ON_HOST, overlap=False), [12] * 8, 6, 10),
    ("llama", Policy(3, 2, P(50, 50, 0), ON_HOST, ON_DEVICE), [20, 4, 6, 9, 10, 11], 8, 0),
    ("llama", Policy(3, 2, P(50, 50, 0), ON_HOST, ON_DEVICE, overlap=False),
     [20, 4, 6, 9, 10, 11], 8, 0),
    ("llama", Policy(2, 2, P(30, 30, 40), P(30, 40, 30), P(40, 30, 30)), [3, 11, 1, 4], 6, 6),
    ("qwen2", Policy(8, 1, P(20, 30, 50), P(50, 0, 50), P(0, 50, 50)), [16] * 8, 4, 0),
    ("mistral", Policy(2, 4, ON_DEVICE, P(25, 25, 50), ON_DEVICE), [10] * 8, 10, 0),
    ("opt350", Policy(4, 1, ON_HOST, ON_DEVICE, ON_DISK, overlap=False), [20] * 4, 3, 0),
    ("llama_tied", Policy(1, 4, P(60, 40, 0), ON_HOST, ON_HOST), [7, 7, 7, 7], 12, 0),
    # attention in place over a host cache; 4-bit caches and weights
    ("opt", Policy(4, 2, ON_DEVICE, ON_HOST, ON_DEVICE, cpu_attention=True, overlap=False),
     [12] * 8, 6, 0),
    ("llama", Policy(3, 2, ON_HOST, P(50, 50, 0), ON_DEVICE, cpu_attention=True, overlap=False),
     [20, 4, 6, 9, 10, 11], 8, 4),
    ("opt", Policy(4, 2, ON_DEVICE, ON_HOST, ON_DEVICE, compress_cache=True, overlap=False),
     [12] * 8, 6, 5),
    ("llama", Policy(3, 2, P(50, 0, 50), P(30, 30, 40), ON_DEVICE, compress_weights=True,
                     compress_cache=True, overlap=False), [20, 4, 6, 9, 10, 11], 8, 0),
]


def _label(case) -> str:
    family, policy, lengths, _, prefix = case
    return (f"{family}-{policy.gpu_batch_size}x{policy.num_gpu_batches}"
            f"-{'overlap' if policy.overlap else 'inorder'}-{len(lengths)}rows-p{prefix}"
            f"{'-cpuattn' if policy.cpu_attention else ''}"
            f"{'-4bit' if policy.compress_cache or policy.compress_weights else ''}")


@pytest.mark.parametrize("case", CASES, ids=[_label(case) for case in CASES])
def test_predicted_peaks_match_measured(model_dirs, profile, case):
    family, policy, lengths, gen_len, prefix_len = case
    rnd = random.Random(len(lengths))
    prompts = [[rnd.randrange(3, 90) for _ in range(length)] for length in lengths]
    prefix = [rnd.randrange(3, 90) for _ in range(prefix_len)] or None
    with Engine.from_pretrained(model_dirs(family), policy=policy, dtype=torch.float32,
                                memory=BUDGETS) as eng:
        eng.generate(prompts, SamplingParams(max_new_tokens=gen_len, ignore_eos=True),
                     prefix=prefix)
        measured = dict(eng.stats.peak_bytes)
        cfg = eng.config
    workload = Workload.from_lengths(lengths, gen_len, prefix_len)
    predicted = predict(cfg, layer_specs(cfg), policy, workload, profile, torch.float32)
    for tier, peak in measured.items():
        expected = predicted.peak_bytes[tier]
        assert abs(expected - peak) <= TOLERANCE * peak, (tier, expected, peak)
        assert predicted.peak_bound[tier] >= peak, (tier, predicted.peak_bound[tier], peak)


@pytest.mark.parametrize("policy", [
    Policy(4, 2, P(20, 30, 50), P(0, 50, 50), P(50, 0, 50)),
    Policy(3, 2, P(0, 40, 60), ON_DISK, ON_DEVICE, overlap=False),
    Policy(4, 2, ON_DISK, P(50, 0, 50), ON_DEVICE, compress_weights=True),
], ids=["mixed", "disk-cache", "4bit-weights"])
def test_predicted_disk_bytes_match_the_stats(model_dirs, policy):
    """The planner's bytes over the disk link agree with what the engine counts (10%)."""
    lengths, gen_len = [12, 12, 12, 12, 9, 9, 9, 9, 6, 6], 5
    rnd = random.Random(3)
    prompts = [[rnd.randrange(3, 90) for _ in range(length)] for length in lengths]
    with Engine.from_pretrained(model_dirs("llama"), policy=policy, dtype=torch.float32,
                                memory=BUDGETS) as eng:
        eng.generate(prompts, SamplingParams(max_new_tokens=gen_len, ignore_eos=True))
        moved, cfg = eng.stats.bytes_moved, eng.config
    predicted = predicted_disk_bytes(cfg, layer_specs(cfg), policy,
                                     Workload.from_lengths(lengths, gen_len, 0), torch.float32)
    for link, expected in predicted.items():
        assert abs(expected - moved.get(link, 0)) <= 0.1 * max(moved.get(link, 0), 1), (
            link, expected, moved.get(link, 0))


def _stop_row_early(row_id: int, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
    """Row r ends after 6 r + 8 tokens: batches drop rows (and re-make caches) often."""
    if len(generated) >= 6 * row_id + 8:
        logits.fill_(float("-inf"))
        logits[STOP] = 0.0
    return logits


STOP = 1


@pytest.mark.parametrize("remake", ["grow", "drop-rows"])
@pytest.mark.parametrize("policy", [
    Policy(6, 1, ON_DEVICE, ON_DEVICE, ON_DEVICE),
    Policy(3, 2, P(50, 50, 0), ON_DEVICE, ON_DEVICE),
    Policy(3, 2, ON_DEVICE, ON_HOST, ON_DEVICE, cpu_attention=True),
    Policy(3, 2, ON_DEVICE, ON_DISK, ON_DEVICE, overlap=False),
], ids=["all-device", "device-cache", "cpu-attention", "disk-cache"])
def test_the_planning_bound_holds_while_caches_are_re_made(model_dirs, monkeypatch, profile,
                                                          policy, remake):
    """A decode step re-makes a cache used where it lives beside its home when it grows (here
    from 32 columns to its capacity of 41) or rows finish (at capacity from the start): plans
    are checked against a bound that counts the copy. One-id prompts, so that the prefill's
    working set does not hide a decode step's peak."""
    from engine import batch as batch_module

    lengths, gen_len = [1] * 6, 40
    prompts = [[3 + row] for row in range(6)]
    if remake == "grow":
        monkeypatch.setattr(batch_module, "GROW_COLUMNS", 1)  # 2, 4, 8, 16, 32, 41 columns
        params = SamplingParams(max_new_tokens=gen_len, ignore_eos=True)
    else:
        params = SamplingParams(max_new_tokens=gen_len, stop_ids=(STOP,),
                                logits_processor=_stop_row_early)
    with Engine.from_pretrained(model_dirs("llama"), policy=policy, dtype=torch.float32,
                                memory=BUDGETS) as eng:
        eng.generate(prompts, params)
        measured, cfg = dict(eng.stats.peak_bytes), eng.config
    predicted = predict(cfg, layer_specs(cfg), policy, Workload.from_lengths(lengths, gen_len, 0),
                        profile, torch.float32)
    for tier, peak in measured.items():
        assert predicted.peak_bound[tier] >= peak, (tier, predicted.peak_bound[tier], peak)
