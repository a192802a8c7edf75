"""Run the benchmark: every system in its own process on the same prompts and checkpoint.

    python -m benchmarks.run [--quick] [--workload 1 --workload 2] [--repeats 3] \
        [--device cpu|cuda] [--dtype auto|bfloat16|float32] [--cap auto|on|off] \
        [--systems hf,ours:auto] [--report docs/benchmarks.md]

For each workload: build the checkpoint (once), measure the machine (once, cached), compute
the floor, then per system: evict the model files from the page cache, start the runner inside
the workload's memory cap, collect its JSON line. Peers sweep batch sizes (one run each) and
repeat the best; medians go to results/<timestamp>.json and a markdown table on stdout.
Every system, the memory plan and the floor use one dtype (`--dtype`, `benchmarks.dtypes`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import BENCH_DIR, CACHE_DIR, RESULTS_DIR, peers
from benchmarks.checkpoints import ensure_checkpoint
from benchmarks.dtypes import DTYPE_CHOICES, resolve_dtype, short_name
from benchmarks.floor import WorkloadShape, compute_floor, load_or_measure
from benchmarks.hardware import Hardware
from benchmarks.machine import git_revision, machine_info, versions
from benchmarks.memcap import evict_page_cache, memory_cap
from benchmarks.modelinfo import ModelShape
from benchmarks.report import add_peer_ratios, best_batch, refresh_section, render_report, summarize
from benchmarks.runners.common import make_prompts
from benchmarks.workloads import (
    ACTIVATION_ALLOWANCE,
    MemoryPlan,
    SystemSpec,
    Workload,
    get_workload,
    in_dtype,
    memory_plan,
)

OFFLOAD_PARENT = CACHE_DIR / "offload"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Context:
    """Everything one workload's runs share."""

    workload: Workload
    model_dir: Path
    shape: ModelShape
    memory: MemoryPlan
    device: str
    repeats: int
    raw_dir: Path
    timeout_s: float
    dtype: str = "bfloat16"  # every system's weights and compute


def ours_memory(ctx: Context) -> dict[str, int] | None:
    """The engine's tier budgets. On a CPU: all the memory the workload grants beside the
    imports (resident weights, two streamed layers, activations, the KV allowance) as one
    budget, since the device and host tiers are the same RAM; the planner splits it between
    weights and KV cache as it likes, as a peer splits its cap between its batch's KV cache and
    the page cache that holds its offloaded weights. On a GPU: the device gets the weights'
    share, two layers and activations; host RAM (not the scarce memory there) the rest."""
    if ctx.memory.weight_budget is None:
        return None
    device = ctx.memory.weight_budget + 2 * ctx.shape.layer_bytes + ACTIVATION_ALLOWANCE
    disk = 100 * 1024**3
    if ctx.workload.cap_bytes and ctx.device == "cpu":  # a given cap: budgets + fixed overhead
        from engine.memory_limit import FIXED_OVERHEAD_BYTES

        return {"device": ctx.workload.cap_bytes - FIXED_OVERHEAD_BYTES, "host": 0, "disk": disk}
    if ctx.device == "cuda":
        return {"device": device, "host": ctx.memory.kv_allowance + ctx.shape.weight_bytes,
                "disk": disk}
    return {"device": device + ctx.memory.kv_allowance, "host": 0, "disk": disk}


def runner_command(ctx: Context, system: SystemSpec, batch: int | None,
                   offload_dir: Path = OFFLOAD_PARENT) -> list[str]:
    work = ctx.workload
    python = str(peers.vllm_python()) if system.runner == "vllm_cpu" else sys.executable
    cmd = [python, "-m", f"benchmarks.runners.{system.runner}",
           "--model", str(ctx.model_dir), "--rows", str(work.rows),
           "--prompt-len", str(work.prompt_len), "--gen-len", str(work.gen_len),
           "--device", ctx.device, "--variant", system.label, "--prompts", work.prompts,
           "--prefix-len", str(work.prefix_len), "--dtype", ctx.dtype]
    if batch is not None:
        cmd += ["--batch", str(batch)]
    if system.runner == "accelerate_offload":
        budget = ctx.memory.weight_budget or ctx.shape.weight_bytes
        cmd += ["--budget", str(budget), "--offload-dir", str(offload_dir)]
        if ctx.device == "cuda":
            cmd += ["--host-budget", str(ctx.shape.weight_bytes)]
    if system.runner == "llamacpp":
        cmd += ["--gguf-type", system.policy or "bf16"]
    if system.runner in ("ours", "pipeline"):
        cmd += ["--policy", system.policy or "auto", "--offload-dir", str(offload_dir)]
        if system.share_prefix:
            cmd.append("--share-prefix")
        if system.compression:
            cmd.append("--allow-compression")
        if system.mode:
            cmd += ["--mode", system.mode]
        memory = ours_memory(ctx)
        if memory is not None:
            cmd += ["--memory", json.dumps(memory)]
    return cmd


def run_once(ctx: Context, system: SystemSpec, batch: int | None, phase: str,
             index: int) -> dict:
    """One process: evict caches, start inside the cap, wait, parse the last JSON line.
    Its offload folder is removed afterwards, also when the run was killed."""
    run_id = f"w{ctx.workload.key}-{system.label.replace(':', '-')}-{phase}-{batch or 'na'}-{index}"
    offload_dir = OFFLOAD_PARENT / f"{ctx.raw_dir.name}-{run_id}"
    offload_dir.mkdir(parents=True, exist_ok=True)
    cmd = runner_command(ctx, system, batch, offload_dir)
    evicted = evict_page_cache([ctx.model_dir, *peers.model_files(system.runner, system.policy,
                                                                  ctx.model_dir)])
    stdout_path, stderr_path = ctx.raw_dir / f"{run_id}.out", ctx.raw_dir / f"{run_id}.err"
    try:
        with memory_cap(ctx.memory.cap_bytes, run_id) as cap, stdout_path.open("w") as out, \
                stderr_path.open("w") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, preexec_fn=cap.preexec(),
                                    start_new_session=True, cwd=BENCH_DIR.parent)
            rc, usage = _wait(proc, ctx.timeout_s), cap.usage()
    finally:
        shutil.rmtree(offload_dir, ignore_errors=True)
    result = _parse_result(stdout_path.read_text(), rc, stderr_path.read_text(), usage)
    result.update(label=system.label, runner=system.runner, phase=phase, batch=batch,
                  command=shlex.join(cmd), cap=usage, evicted_bytes=evicted, rc=rc)
    log(f"{run_id}: " + (f"{result['tok_per_s']:.1f} tok/s" if "tok_per_s" in result
                         else f"FAILED ({result['error'].splitlines()[-1][:120]})"))
    return result


def _wait(proc: subprocess.Popen, timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner we started, in its own session
        proc.wait()
        return -999


def _parse_result(stdout: str, rc: int, stderr: str, usage: dict) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if rc == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    if rc == -999:
        reason = "timed out"
    elif usage.get("oom_kills") or rc == -signal.SIGKILL:
        reason = "killed (out of memory)" if usage.get("oom_kills") else "killed (SIGKILL)"
    else:
        lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines()]
        reason = f"rc={rc}: " + ([line for line in lines if line] or ["no stderr"])[-1]
    return {"error": reason}


def run_system(ctx: Context, system: SystemSpec) -> list[dict]:
    """Peers: one run per batch size of the sweep, then repeats of the best (counted). A peer
    that is not built, or cannot load this checkpoint, is one skipped row with the reason."""
    reason = peers.prepare(system.runner, system.policy, ctx.model_dir)
    if reason:
        log(f"{system.label}: skipped ({reason})")
        return [{"label": system.label, "runner": system.runner, "error": f"skipped: {reason}",
                 "skipped": reason, "counted": False, "cap": {}, "batch": None}]
    if not system.sweep:
        runs = [run_once(ctx, system, None, "repeat", idx) for idx in range(ctx.repeats)]
        return [dict(run, counted=True) for run in runs]
    sweep = [run_once(ctx, system, batch, "sweep", 0)
             for batch in system.batches or ctx.workload.peer_batches]
    best = best_batch(sweep)
    if best is None:
        return [dict(run, counted=False) for run in sweep]
    more = [run_once(ctx, system, best, "repeat", idx) for idx in range(1, ctx.repeats)]
    return [dict(run, counted=run["batch"] == best) for run in sweep] + \
        [dict(run, counted=True) for run in more]


def workload_shape(ctx: Context) -> WorkloadShape:
    """What the floor sees: the mean prompt length of the very prompts the runners use."""
    work = ctx.workload
    vocab = json.loads((ctx.model_dir / "config.json").read_text())["vocab_size"]
    prompts = make_prompts(work.prompts, work.rows, work.prompt_len, work.prefix_len, vocab, 0)
    mean_len = sum(len(prompt) for prompt in prompts) / len(prompts)
    return WorkloadShape(work.rows, mean_len, work.gen_len, shared_prefix=work.prefix_len)


def run_workload(ctx: Context, hardware: Hardware, only: list[str] | None) -> dict:
    start = time.monotonic()
    floor = compute_floor(ctx.shape, workload_shape(ctx), hardware, ctx.memory.fast_budget)
    work = ctx.workload
    runs: list[dict] = []
    for system in work.systems:
        named = bool(only) and any(system.label.startswith(prefix) for prefix in only)
        if (only and not named) or (system.optional and not named):
            continue
        log(f"workload {work.key}: {system.label}")
        runs += run_system(ctx, system)
    warnings = sorted({run["cap"]["warning"] for run in runs if run["cap"].get("warning")})
    return {
        "workload": asdict(work), "model_dir": str(ctx.model_dir), "dtype": ctx.dtype,
        "weight_bytes": ctx.shape.weight_bytes, "memory": asdict(ctx.memory),
        "floor": floor.as_dict(), "runs": runs, "warnings": warnings,
        "wall_s": time.monotonic() - start,
        "summary": add_peer_ratios(summarize(runs, floor.seconds)),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small variants (< 3 min each)")
    parser.add_argument("--workload", action="append", choices=["1", "2", "3", "4", "4-tight", "cpu"],
                        help="repeatable; default: 1 and 2 (3: wrangling, hours at full size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="every system's weights and compute, and the floor's (auto: on "
                        "a CPU the engine's default, bf16 only where the CPU multiplies bf16 "
                        "in hardware, else fp32; on CUDA bf16)")
    parser.add_argument("--cap", default="auto", choices=["auto", "on", "off"],
                        help="cgroup memory cap: auto = the workload's default (2: on)")
    parser.add_argument("--systems", default=None, help="comma list of label prefixes")
    parser.add_argument("--model", default=None, help="checkpoint preset instead of default")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    parser.add_argument("--remeasure", action="store_true", help="re-probe machine rates")
    parser.add_argument("--report", type=Path, default=None, help="markdown file to refresh")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.dtype = resolve_dtype(args.dtype, args.device)  # "auto" resolved once, here
    return args


def make_context(args: argparse.Namespace, number: str, raw_dir: Path) -> Context:
    work = in_dtype(get_workload(number, args.quick), args.dtype)
    if args.model:
        work = replace(work, model=args.model)
    model_dir = ensure_checkpoint(work.model)
    shape = ModelShape.from_dir(model_dir).in_dtype(args.dtype)
    capped = None if args.cap == "auto" else args.cap == "on"
    if args.cap == "auto" and args.device == "cuda":
        capped = False  # the cap is for page cache on a CPU box; GPU memory is the budget
    memory = memory_plan(work, shape.weight_bytes, shape.kv_bytes_per_token(),
                         shape.layer_bytes, capped)
    timeout = args.timeout or (300.0 if args.quick else 1800.0)
    return Context(work, model_dir, shape, memory, args.device, args.repeats, raw_dir, timeout,
                   args.dtype)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not _cuda_available():
        print("skipping the GPU variant: torch.cuda.is_available() is False")
        return 0
    numbers = args.workload or ["1", "2"]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    raw_dir = args.results_dir / "raw" / stamp
    raw_dir.mkdir(parents=True, exist_ok=True)
    hardware = load_or_measure(args.device, args.dtype, refresh=args.remeasure, quick=args.quick)
    if args.remeasure:
        refresh_engine_profile(args.device, args.dtype)
    only = args.systems.split(",") if args.systems else None
    workloads = [run_workload(make_context(args, n, raw_dir), hardware, only) for n in numbers]
    results = {"meta": _meta(stamp, args.dtype), "hardware": asdict(hardware),
               "workloads": workloads}
    out_path = args.results_dir / f"{stamp}.json"
    out_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    markdown = render_report(results)
    print(markdown)
    log(f"results: {out_path}; raw logs: {raw_dir}")
    if args.report:
        refresh_section(args.report, markdown)
        log(f"refreshed the generated section of {args.report}")
    return 0


def refresh_engine_profile(device: str, dtype: str) -> None:
    """Re-measure the engine's own hardware profile (what its planner reads) with the harness's
    rates, so that `ours:auto` plans with the machine's speed now, not the cached one."""
    import torch

    from engine.policy import load_profile

    OFFLOAD_PARENT.mkdir(parents=True, exist_ok=True)
    profile = load_profile(device, OFFLOAD_PARENT, refresh=True)
    rate = profile.flops(getattr(torch, dtype)) / 1e12
    log(f"engine profile re-measured: {short_name(dtype)} {rate:.2f} TFLOP/s, "
        f"disk->host {profile.bandwidth['disk->host'] / 1e9:.2f} GB/s")


def _meta(stamp: str, dtype: str) -> dict:
    python = os.path.relpath(sys.executable, BENCH_DIR.parent)
    command = shlex.join([python, "-m", "benchmarks.run", *sys.argv[1:]])
    return {"timestamp": stamp, "command": command, "dtype": dtype, "machine": machine_info(),
            "versions": versions(), "git": git_revision(BENCH_DIR.parent)}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
