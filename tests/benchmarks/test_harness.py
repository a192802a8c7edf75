"""Fast tests of the benchmark harness's pure parts: floor arithmetic, medians and ratios,
markdown, prompts, the memory plan, and the checkpoint builder on a tiny shape."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.checkpoints import build_checkpoint, is_built, preset_config, tensor_specs
from benchmarks.floor import WorkloadShape, compute_floor, flops, link_bytes
from benchmarks.hardware import Hardware
from benchmarks.memcap import MemoryCap, evict_page_cache, memory_cap, own_memory_cgroup
from benchmarks.modelinfo import ModelShape
from benchmarks.prompts import FIRST_ORDINARY_ID, random_prompts, wrangling_prompts
from benchmarks.report import (
    SECTION_BEGIN,
    SECTION_END,
    add_peer_ratios,
    best_batch,
    refresh_section,
    render_report,
    render_table,
    summarize,
)
from benchmarks.run import ours_memory
from benchmarks.runners.common import batches, build_result, fingerprint
from benchmarks.workloads import (
    ACTIVATION_ALLOWANCE,
    IMPORT_OVERHEAD,
    WORKLOADS,
    get_workload,
    memory_plan,
)
from engine.memory_limit import FIXED_OVERHEAD_BYTES

# a toy shape with round numbers: 2 layers, q_dim = kv_dim = 4
SHAPE = ModelShape(num_layers=2, hidden_size=4, q_dim=4, kv_dim=4, vocab_size=10,
                   weight_bytes=1000, matmul_params=100, head_params=40, layer_bytes=100)
HW = Hardware("cpu", matmul_flops=1e6, fast_bandwidth=1e4, offload_bandwidth=1e2,
              offload_method="O_DIRECT", measured_at="now")


# ---- floor -------------------------------------------------------------------------------
def test_flops_counts_dense_head_and_attention() -> None:
    work = WorkloadShape(rows=2, prompt_len=3, gen_len=2)
    dense = 2 * 100 * 2 * (3 + 2 - 1) + 2 * 40 * 2 * 2  # fed tokens; head once per new id
    attended = (1 + 2 + 3) + 4  # prefill triangle + one decode step over 4 keys
    assert flops(SHAPE, work) == dense + 4 * 4 * 2 * 2 * attended


def test_link_bytes_weights_once_per_pass_and_kv_traffic() -> None:
    work = WorkloadShape(rows=2, prompt_len=3, gen_len=2)
    kv_token = 2 * 2 * 4 * 2  # K and V, 2 layers, kv_dim 4, bf16
    streamed = (100 + 40) * 2
    moved = link_bytes(SHAPE, work, num_blocks=1, fast_budget=None)
    assert moved == {"fast": 2 * streamed + 2 * 4 * kv_token + 2 * 4 * kv_token}
    spill = link_bytes(SHAPE, work, num_blocks=1, fast_budget=200)["offload"]
    assert spill == (streamed - 200) + (streamed + 2 * 4 * kv_token - 200)


def test_floor_is_the_slowest_resource_at_the_best_block_split() -> None:
    work = WorkloadShape(rows=4, prompt_len=8, gen_len=4)
    unconstrained = compute_floor(SHAPE, work, HW)
    assert unconstrained.num_blocks == 1  # more blocks only re-read the weights
    assert unconstrained.seconds == pytest.approx(max(unconstrained.compute_s,
                                                      *unconstrained.link_s.values()))
    assert unconstrained.tok_per_s == pytest.approx(16 / unconstrained.seconds)
    capped = compute_floor(SHAPE, work, HW, fast_budget=100)
    assert capped.bound == "offload"
    assert capped.seconds > unconstrained.seconds


def test_floor_can_prefer_small_blocks_when_the_weights_fit() -> None:
    # weights fit the budget; only small blocks keep the KV cache out of the offload link
    work = WorkloadShape(rows=64, prompt_len=16, gen_len=4)
    floor = compute_floor(SHAPE, work, HW, fast_budget=280 + 3000)
    assert floor.num_blocks > 1
    assert floor.link_bytes["offload"] == 0


def test_shared_prefix_is_computed_once() -> None:
    plain = WorkloadShape(rows=8, prompt_len=20, gen_len=4)
    shared = WorkloadShape(rows=8, prompt_len=20, gen_len=4, shared_prefix=16)
    saved_dense = 2 * 100 * 7 * 16  # 7 of the 8 rows no longer feed the 16 prefix ids
    assert flops(SHAPE, plain) - flops(SHAPE, shared) > saved_dense
    kv_plain = link_bytes(SHAPE, plain, 1, None)["fast"]
    assert link_bytes(SHAPE, shared, 1, None)["fast"] < kv_plain
    assert flops(SHAPE, WorkloadShape(8, 20, 4, shared_prefix=0)) == flops(SHAPE, plain)


def test_model_shape_from_headers_handles_tied_head_and_gqa() -> None:
    config = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 16,
              "num_hidden_layers": 1, "vocab_size": 10}
    tensors = {"model.embed_tokens.weight": ([10, 16], 320),
               "model.layers.0.mlp.up.weight": ([32, 16], 1024),
               "model.layers.0.norm.weight": ([16], 32)}
    shape = ModelShape.from_parts(config, tensors)
    assert (shape.q_dim, shape.kv_dim) == (16, 8)
    assert shape.head_params == 160 and shape.matmul_params == 512
    assert shape.weight_bytes == 1376 and shape.layer_bytes == 1056
    tensors["lm_head.weight"] = ([10, 16], 2000)  # an untied head bigger than a layer
    assert ModelShape.from_parts(config, tensors).layer_bytes == 2000
    assert shape.kv_bytes_per_token() == 2 * 1 * 8 * 2


# ---- aggregation and markdown ----------------------------------------------------------------
def _run(label: str, runner: str, tok_per_s: float, batch: int | None = None,
         counted: bool = True, error: str | None = None) -> dict:
    run = {"label": label, "runner": runner, "batch": batch, "counted": counted,
           "phase": "sweep" if batch else "repeat"}
    if error:  # a failed run is what the orchestrator records: no rates at all
        return {**run, "error": error}
    return {**run, "tokens_ok": True, "tok_per_s": tok_per_s, "rows_per_s": tok_per_s / 8,
            "e2e_tok_per_s": tok_per_s / 2, "generate_s": 64 / tok_per_s,
            "peak_rss_bytes": 2**30, "read_bytes": 2**20,
            "outputs_sha": "abc"}


def _runs() -> list[dict]:
    return [
        _run("hf", "hf", 10.0, batch=16, counted=False),
        _run("hf", "hf", 20.0, batch=32),
        _run("hf", "hf", 0.0, batch=64, counted=False, error="killed (out of memory)"),
        _run("hf", "hf", 22.0, batch=32),
        _run("hf", "hf", 18.0, batch=32),
        _run("ours:auto", "ours", 40.0),
        _run("ours:auto", "ours", 44.0),
        _run("ours:auto", "ours", 41.0),
    ]


def test_summary_takes_medians_of_counted_successful_runs() -> None:
    rows = add_peer_ratios(summarize(_runs(), floor_s=1.0))
    hf, ours = rows
    assert (hf["runs"], hf["failures"], hf["tok_per_s"], hf["batch"]) == (3, 1, 20.0, 32)
    assert hf["failure"] == "killed (out of memory)"
    assert (ours["tok_per_s"], ours["tok_per_s_min"], ours["tok_per_s_max"]) == (41.0, 40.0, 44.0)
    assert ours["x_floor"] == pytest.approx(64 / 41.0)
    assert ours["vs"] == {"hf": pytest.approx(41.0 / 20.0)}
    assert best_batch([r for r in _runs() if r["label"] == "hf"]) == 32


def test_all_failed_system_renders_as_failed_row() -> None:
    failed = _run("accelerate_offload", "accelerate_offload", 0.0, batch=8, counted=False,
                  error="killed (out of memory)")
    runs = [failed, *_runs()[5:]]
    table = render_table(add_peer_ratios(summarize(runs, floor_s=None)))
    assert "failed: killed (out of memory)" in table
    assert "vs accelerate_offload" not in table  # no median, so no ratio column
    assert len(table.splitlines()) == 4


def test_render_report_and_refresh_section(tmp_path: Path) -> None:
    runs = _runs()
    work = {"key": "1-quick", "title": "fits in RAM", "model": "opt-125m", "rows": 8,
            "prompt_len": 4, "gen_len": 8}
    floor = compute_floor(SHAPE, WorkloadShape(8, 4, 8), HW).as_dict()
    results = {
        "meta": {"timestamp": "T", "command": "python -m benchmarks.run --quick", "git": "abc",
                 "machine": {"cpu": "CPU", "cores": 2, "ram_bytes": 2**34, "gpu": None,
                             "cpu_flags": ["avx2", "avx512_bf16"]},
                 "versions": {"torch": "2"}},
        "hardware": HW.__dict__,
        "workloads": [{"workload": work, "floor": floor, "weight_bytes": 1000, "runs": runs,
                       "memory": {"weight_budget": None, "cap_bytes": None},
                       "summary": add_peer_ratios(summarize(runs, floor["seconds"]))}],
    }
    text = render_report(results)
    assert "on CPU [avx2 avx512_bf16] (2 cores" in text
    assert "### Workload 1-quick" in text and "| ours:auto | - | 3 | 41.0 (40.0-44.0)" in text
    assert "sweep hf: batch 16: 10.0 tok/s, batch 32: 20.0 tok/s, batch 64: failed" in text
    assert "identical ids across 2 system(s)" in text
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Bench\n\nintro kept\n")
    refresh_section(doc, "first")
    refresh_section(doc, "second")
    content = doc.read_text()
    assert content.count(SECTION_BEGIN) == 1 and content.count(SECTION_END) == 1
    assert "intro kept" in content and "second" in content and "first" not in content


def test_build_result_counts_tokens_and_rates() -> None:
    import argparse

    from benchmarks.runners.common import Meter

    args = argparse.Namespace(variant="hf", model="m", rows=2, prompt_len=3, gen_len=4,
                              device="cpu", dtype="bfloat16", warmup_tokens=0)
    meter = Meter(seconds={"load": 1.0, "generate": 2.0}, read_bytes={"load": 5, "generate": 7},
                  write_bytes={"load": 0, "generate": 0})
    result = build_result(args, "hf", [[9, 9, 9], [9, 9, 9]], [[1, 2, 3, 4], [5, 6, 7, 8]], meter)
    assert result["tokens_ok"] and result["tok_per_s"] == 4.0 and result["rows_per_s"] == 1.0
    assert result["e2e_tok_per_s"] == pytest.approx(8 / 3)
    assert result["read_bytes"] == 12 and result["outputs_sha"] == fingerprint([[1, 2, 3, 4],
                                                                                [5, 6, 7, 8]])
    assert result["prompt_tokens"] == 6
    assert not build_result(args, "hf", [[9]], [[1, 2, 3]], meter)["tokens_ok"]
    json.dumps(result)


# ---- prompts, workloads, memory -------------------------------------------------------------
def test_prompts_are_seeded_and_avoid_special_ids() -> None:
    first = random_prompts(4, 16, vocab_size=100, seed=3)
    assert first == random_prompts(4, 16, vocab_size=100, seed=3)
    assert first != random_prompts(4, 16, vocab_size=100, seed=4)
    assert all(len(row) == 16 and min(row) >= FIRST_ORDINARY_ID for row in first)
    wrangle = wrangling_prompts(50, prefix_len=10, median_row_len=8, vocab_size=100)
    assert len({tuple(row[:10]) for row in wrangle}) == 1
    assert len({len(row) for row in wrangle}) > 5
    assert list(batches(first, 3)) == [first[:3], first[3:]]


def test_workloads_and_memory_plan() -> None:
    assert get_workload("1", quick=False).rows == 256
    assert get_workload("2", quick=True) is WORKLOADS["2-quick"]
    wrangling = get_workload("3", quick=False)
    assert (wrangling.rows, wrangling.prefix_len, wrangling.prompt_len) == (2000, 400, 464)
    assert [s.label for s in wrangling.systems if not s.optional] == [
        "pipeline:plain", "pipeline:pipeline", "ours:auto", "ours:auto+prefix", "hf"]
    with pytest.raises(ValueError):
        get_workload("9", quick=False)
    offload = get_workload("2", quick=False)
    plan = memory_plan(offload, weight_bytes=4000, kv_bytes_per_token=10, layer_bytes=100)
    assert plan.weight_budget == 1000 and plan.kv_allowance == 64 * 160 * 10
    assert plan.cap_bytes == plan.fast_budget + 200 + 1024 * 1024**2
    in_ram = memory_plan(get_workload("1", quick=False), 4000, 10, 100)
    assert in_ram.weight_budget is None and in_ram.cap_bytes is None
    assert in_ram.fast_budget is None


def test_memory_cap_parses_cgroup_and_falls_back(tmp_path: Path) -> None:
    assert own_memory_cgroup("5:cpu:/\n4:memory:/a/b\n0::/").parts[-2:] == ("a", "b")
    assert own_memory_cgroup("0::/") is None
    with memory_cap(None, "none") as cap:
        assert cap.preexec() is None and cap.usage() == {"limit_bytes": None, "capped": False}
    assert MemoryCap(10, None, "no").usage()["warning"] == "no"
    (tmp_path / "f.bin").write_bytes(b"x" * 4096)
    assert evict_page_cache([tmp_path]) == 4096


# ---- checkpoint builder ---------------------------------------------------------------------
def test_tiny_checkpoint_builds_loads_and_matches_its_specs(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    config = preset_config("tiny-opt")
    out = build_checkpoint(config, tmp_path / "tiny", seed=1, shard_bytes=100_000)
    assert is_built(out) and (out / "model.safetensors.index.json").exists()
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == torch.bfloat16
    shape = ModelShape.from_dir(out)
    specs = tensor_specs(config)
    assert shape.weight_bytes == sum(torch.Size(s).numel() * d.itemsize for s, d in specs.values())
    again = build_checkpoint(config, tmp_path / "again", seed=1, shard_bytes=100_000)
    first = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert all(torch.equal(first[name], value) for name, value in model.state_dict().items())


def test_gpu_variant_skips_cleanly_without_cuda(monkeypatch, capsys) -> None:
    from benchmarks import run

    monkeypatch.setattr(run, "_cuda_available", lambda: False)
    assert run.main(["--device", "cuda", "--quick"]) == 0
    assert "skipping the GPU variant" in capsys.readouterr().out


def test_ours_gets_the_whole_grant_as_one_ram_budget_on_a_cpu() -> None:
    offload = get_workload("2", quick=False)
    plan = memory_plan(offload, weight_bytes=4000, kv_bytes_per_token=10, layer_bytes=100)
    ctx = SimpleNamespace(memory=plan, shape=SHAPE, device="cpu", workload=offload)
    cpu = ours_memory(ctx)
    assert cpu["host"] == 0 and cpu["device"] == plan.cap_bytes - IMPORT_OVERHEAD
    gpu = ours_memory(SimpleNamespace(memory=plan, shape=SHAPE, device="cuda", workload=offload))
    assert gpu["device"] == plan.weight_budget + 2 * SHAPE.layer_bytes + ACTIVATION_ALLOWANCE
    in_ram = get_workload("1", quick=False)
    assert ours_memory(SimpleNamespace(memory=memory_plan(in_ram, 4000, 10, 100),
                                       workload=in_ram)) is None
    # a workload that gives its cap (issue 11's 2.5 GiB): the cap less the stated overhead
    tight = get_workload("4-tight", quick=False)
    tight_plan = memory_plan(tight, 4000, 10, 100)
    assert tight_plan.cap_bytes == tight.cap_bytes
    budget = ours_memory(SimpleNamespace(memory=tight_plan, shape=SHAPE, device="cpu",
                                         workload=tight))
    assert budget["device"] == tight.cap_bytes - FIXED_OVERHEAD_BYTES
