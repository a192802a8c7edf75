"""Issue 15: one stage vs N pipeline stages, each process under the same memory cap and one
thread (so N stages have N times the memory and cores in total, as N devices would).

    python -m benchmarks.stages --model benchmarks/.cache/models/opt-350m --cap 1GiB \
        --rows 64 --prompt-len 64 --gen-len 16 [--stages 1 2] [--out results.json]

Each configuration runs in a fresh process (`--child N`); the model's files are evicted from
the page cache first. One stage: that process is capped (cgroup v1) and plans with
policy="auto" for the workload within the cap less `FIXED_OVERHEAD_BYTES`. N stages: the
driver process (which holds no layers) starts each stage inside its own capped cgroup (from
before its interpreter starts); each stage plans for its own layers within the same budget.
Generated tokens per second over the timed generate (after a short warm-up) is reported with
each stage's figures: disk bytes read, seconds of compute / communication / I/O wait.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import machine_info
from benchmarks.memcap import MemoryCap, evict_page_cache, memory_cap
from benchmarks.runners.common import make_prompts

DISK_BUDGET = 64 << 30


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cap", required=True, help="memory cap of every process, e.g. 1GiB")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--gen-len", type=int, default=16)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--offload-dir", type=Path, default=Path("benchmarks/.cache/offload"))
    parser.add_argument("--out", type=Path, help="append the JSON results here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    return parser


def _budgets(cap_bytes: int) -> dict[str, int]:
    """What the engine may use under a cap: the cap less the stated fixed overhead (on a CPU
    device and host are the same RAM, so it is all given to the device tier)."""
    from engine.memory_limit import FIXED_OVERHEAD_BYTES

    return {"device": cap_bytes - FIXED_OVERHEAD_BYTES, "host": 0, "disk": DISK_BUDGET}


def _workload(args: argparse.Namespace):
    from engine import Workload

    return Workload(rows=args.rows, prompt_len=args.prompt_len, gen_len=args.gen_len)


def _prompts(args: argparse.Namespace) -> list[list[int]]:
    vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    return make_prompts("random", args.rows, args.prompt_len, 0, vocab, seed=0)


def _timed_generate(engine, args: argparse.Namespace) -> dict:
    from engine import SamplingParams

    prompts = _prompts(args)
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=2, ignore_eos=True))  # warm-up
    begin = time.perf_counter()
    outputs = engine.generate(prompts, SamplingParams(max_new_tokens=args.gen_len,
                                                      ignore_eos=True))
    seconds = time.perf_counter() - begin
    tokens = sum(len(out) for out in outputs)
    return {"generate_s": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "outputs_head": outputs[0][:8]}


def _one_stage(args: argparse.Namespace, cap_bytes: int) -> dict:
    import torch

    from engine import Engine, plan

    torch.set_num_threads(1)
    budgets = _budgets(cap_bytes)
    chosen = plan(args.model, _workload(args), memory=budgets, offload_dir=args.offload_dir)
    begin = time.perf_counter()
    with Engine.from_pretrained(args.model, policy=chosen.policy, memory=budgets,
                                offload_dir=args.offload_dir) as engine:
        load_s = time.perf_counter() - begin
        result = _timed_generate(engine, args)
        stats = engine.stats.as_dict()
    stage = {key: stats[key] for key in ("peak_bytes", "bytes_moved", "compute_s", "io_wait_s")}
    return {**result, "load_s": load_s, "policies": [repr(chosen.policy)], "why": chosen.why,
            "stages_detail": [stage]}


def _staged(args: argparse.Namespace, stages: int, cap_bytes: int) -> dict:
    from engine.distributed import StagedEngine

    with contextlib.ExitStack() as stack:
        caps: list[MemoryCap] = [stack.enter_context(memory_cap(cap_bytes, f"stage{rank}"))
                                 for rank in range(stages)]

        begin = time.perf_counter()
        engine = StagedEngine.spawn(args.model, stages, policy="auto",
                                    memory=_budgets(cap_bytes), offload_dir=args.offload_dir,
                                    threads=1, workload=_workload(args),
                                    preexec_of=lambda rank: caps[rank].preexec())
        with engine:
            load_s = time.perf_counter() - begin
            result = _timed_generate(engine, args)
            stats = engine.stats
            usage = [cap.usage() for cap in caps]
        keys = ("peak_bytes", "bytes_moved", "compute_s", "comm_s", "io_wait_s", "layers")
        detail = [{key: stage[key] for key in keys} for stage in stats.stages]
        for stage, cgroup in zip(detail, usage, strict=True):
            stage["cgroup"] = cgroup
        return {**result, "load_s": load_s, "policies": [repr(p) for p in engine.policies],
                "stages_detail": detail}


def _child(args: argparse.Namespace) -> None:
    from engine.storage import parse_bytes

    cap_bytes = parse_bytes(args.cap)
    one = args.child == 1
    result = _one_stage(args, cap_bytes) if one else _staged(args, args.child, cap_bytes)
    print(json.dumps({"stages": args.child, **result}), flush=True)


def _run_config(args: argparse.Namespace, stages: int, cap_bytes: int) -> dict:
    evict_page_cache([args.model])
    argv = [sys.executable, "-m", "benchmarks.stages", "--child", str(stages),
            "--model", str(args.model), "--cap", args.cap, "--rows", str(args.rows),
            "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len),
            "--offload-dir", str(args.offload_dir)]
    with memory_cap(cap_bytes if stages == 1 else None, "one-stage") as cap:
        proc = subprocess.run(argv, preexec_fn=cap.preexec(), capture_output=True, text=True)
        usage = cap.usage()
    if proc.returncode != 0:
        return {"stages": stages, "error": proc.stderr[-2000:], "returncode": proc.returncode,
                "cgroup": usage}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if stages == 1:
        result["stages_detail"][0]["cgroup"] = usage
    return result


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.child is not None:
        _child(args)
        return
    from engine.storage import parse_bytes

    args.offload_dir.mkdir(parents=True, exist_ok=True)
    cap_bytes = parse_bytes(args.cap)
    runs = [_run_config(args, stages, cap_bytes) for stages in args.stages]
    report = {"issue": 15, "model": str(args.model), "cap": args.cap, "rows": args.rows,
              "prompt_len": args.prompt_len, "gen_len": args.gen_len,
              "machine": machine_info(), "runs": runs}
    base = next((run for run in runs if run.get("stages") == 1 and "tokens_per_s" in run), None)
    for run in runs:
        if base is not None and "tokens_per_s" in run:
            run["ratio_vs_one_stage"] = run["tokens_per_s"] / base["tokens_per_s"]
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
