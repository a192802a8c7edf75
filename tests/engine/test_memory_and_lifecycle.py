"""Measured peaks stay within budgets; everything the engine made is gone after close()."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from engine import Engine, MemoryBudgetError, Placement, Policy, SamplingParams

PROMPTS = [[3, 4, 5, 6], [7, 8], list(range(10, 30)), [9] * 11, [12, 13, 14]]


def _io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("flexgen-io")]


@pytest.mark.parametrize(
    ("policy", "memory"),
    [
        (Policy(2, 2, Placement(20, 30, 50), Placement(0, 50, 50), Placement.on("device")),
         {"device": "200KiB", "host": "200KiB", "disk": "1MiB"}),
        (Policy(4, 1, Placement.on("disk"), Placement.on("disk"), Placement.on("disk")),
         {"device": "300KiB", "host": "0", "disk": "1MiB"}),
        (Policy(8, 1, Placement.on("device"), Placement.on("device"), Placement.on("device")),
         {"device": "2MiB", "host": "0", "disk": "0"}),
    ],
)
def test_peaks_within_budgets(model_dirs, policy, memory):
    with Engine.from_pretrained(model_dirs("llama"), policy=policy, dtype=torch.float32,
                                memory=memory) as eng:
        eng.generate(PROMPTS, SamplingParams(max_new_tokens=6, ignore_eos=True))
        budgets = {tier: eng._tiers.ledger.budgets[tier] for tier in memory}
        peaks = eng.stats.peak_bytes
    assert all(peaks[tier] <= budgets[tier] for tier in budgets), (peaks, budgets)
    used = [tier for tier in ("device", "host", "disk") if policy.weights.as_dict()[tier]]
    assert all(peaks[tier] > 0 for tier in used)


def test_stats_count_tokens_and_links(model_dirs):
    policy = Policy(2, 2, Placement(0, 50, 50), Placement.on("host"), Placement.on("device"))
    with Engine.from_pretrained(model_dirs("opt"), policy=policy, dtype=torch.float32) as eng:
        outs = eng.generate(PROMPTS, SamplingParams(max_new_tokens=5, ignore_eos=True))
        stats = eng.stats.as_dict()
    assert stats["generated_tokens"] == sum(map(len, outs)) == 5 * len(PROMPTS)
    assert stats["prompt_tokens"] == sum(map(len, PROMPTS))
    assert stats["bytes_moved"]["disk->device"] > 0
    assert stats["compute_s"] > 0 and stats["total_s"] >= stats["compute_s"]


def test_on_a_cpu_host_homes_are_used_in_place(model_dirs):
    """The device and host tiers are the same RAM on a CPU: weights and KV cache on the host
    are computed on where they live, so nothing crosses host->device or device->host, while
    the host tier's budget still holds them."""
    policy = Policy(2, 2, Placement.on("host"), Placement.on("host"), Placement(0, 50, 50))
    with Engine.from_pretrained(model_dirs("opt"), policy=policy, dtype=torch.float32) as eng:
        eng.generate(PROMPTS, SamplingParams(max_new_tokens=5, ignore_eos=True))
        stats = eng.stats.as_dict()
    assert stats["bytes_moved"].get("host->device", 0) == 0
    assert stats["bytes_moved"].get("device->host", 0) == 0
    assert stats["bytes_moved"]["device->disk"] > 0  # half the hidden states go to disk
    assert stats["peak_bytes"]["host"] > 0


def test_budget_too_small_fails_at_construction_with_numbers(model_dirs):
    with pytest.raises(MemoryBudgetError, match=r"device needs at least .*budget"):
        Engine.from_pretrained(model_dirs("llama"), policy=Policy(weights=Placement.on("device")),
                               dtype=torch.float32, memory={"device": "10KiB"})


def test_block_too_big_for_budget_raises_clear_error_and_frees(model_dirs):
    policy = Policy(64, 1, Placement.on("host"), Placement.on("device"), Placement.on("device"))
    with Engine.from_pretrained(model_dirs("llama"), policy=policy, dtype=torch.float32,
                                memory={"device": "100KiB"}) as eng:
        with pytest.raises(MemoryBudgetError, match="device tier"):
            eng.generate([list(range(3, 60))] * 64, SamplingParams(max_new_tokens=40))
        assert eng._tiers.ledger.used["device"] == 0  # nothing leaked by the failed block
        assert eng.generate([[3, 4]], SamplingParams(max_new_tokens=2, ignore_eos=True))


def test_close_removes_offload_dir_and_threads(model_dirs, tmp_path):
    policy = Policy(2, 2, Placement(0, 0, 100), Placement.on("disk"), Placement.on("host"))
    eng = Engine.from_pretrained(model_dirs("opt"), policy=policy, dtype=torch.float32,
                                 offload_dir=tmp_path)
    eng.generate(PROMPTS, SamplingParams(max_new_tokens=3))
    offload = eng.offload_dir
    assert offload.exists() and any(offload.iterdir()) and _io_threads()
    eng.close()
    assert not offload.exists()
    assert not _io_threads()
    with pytest.raises(RuntimeError, match="closed"):
        eng.generate(PROMPTS)
    eng.close()  # idempotent


def test_interpreter_exit_removes_offload_dir(model_dirs, tmp_path):
    script = textwrap.dedent(f"""
        import torch
        from engine import Engine, Placement, Policy, SamplingParams
        policy = Policy(2, 1, Placement.on("disk"), Placement.on("disk"), Placement.on("disk"))
        eng = Engine.from_pretrained({str(model_dirs("opt"))!r}, policy=policy,
                                     dtype=torch.float32, offload_dir={str(tmp_path)!r})
        eng.generate([[3, 4, 5]], SamplingParams(max_new_tokens=2))
        print(eng.offload_dir)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip()
    assert list(tmp_path.iterdir()) == []


def test_use_policy_changes_the_blocks_not_the_weights(model_dirs):
    """A built engine takes another block shape and cache placement (outputs unchanged); a
    policy that would move its weights is refused."""
    on_device = Placement.on("device")
    prompts, params = [[5, 6, 7], list(range(10, 20)), [9]], SamplingParams(max_new_tokens=4)
    with Engine.from_pretrained(model_dirs("llama"), policy=Policy(1, 3, on_device, on_device,
                                                                   on_device),
                                dtype=torch.float32, memory={"device": "64MiB", "host": "64MiB",
                                                             "disk": "64MiB"}) as eng:
        before = eng.generate(prompts, params)
        wide = Policy(4, 1, on_device, Placement.on("disk"), on_device)
        eng.use_policy(wide)
        assert eng.policy == wide and eng.generate(prompts, params) == before
        with pytest.raises(ValueError, match="places the weights"):
            eng.use_policy(Policy(4, 1, Placement.on("disk"), on_device, on_device))
        assert eng.policy == wide
