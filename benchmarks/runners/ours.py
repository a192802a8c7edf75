"""This project's engine (`engine.Engine`), under the auto plan or a named hand policy.

    python -m benchmarks.runners.ours --model DIR --rows 256 --prompt-len 128 --gen-len 32 \
        --policy auto|all-device-32x4|w25-disk75-32x2|'{"gpu_batch_size": 32, ...}' \
        [--memory '{"device": "2GiB", "host": "8GiB", "disk": "100GiB"}'] [--offload-dir DIR] \
        [--dtype bfloat16|float32]

`engine` is imported only when a run starts, so the rest of the harness works without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.runners.common import (
    Meter,
    base_parser,
    build_result,
    emit,
    prompts_for,
    setup_torch,
    warmup_prompts,
)

# Named hand policies: name -> Policy kwargs with placements as {tier: percent}.
HAND_POLICIES: dict[str, dict[str, Any]] = {
    # workload 1: everything on the device tier, 128-row blocks of 32-row GPU batches (a
    # 256-row block's KV cache, 8 GB at opt-1.3b, does not fit the default device budget)
    "all-device-32x4": {
        "gpu_batch_size": 32, "num_gpu_batches": 4,
        "weights": {"device": 100}, "cache": {"device": 100}, "activations": {"device": 100},
    },
    # workload 2 (CPU, where the device tier is RAM): a quarter of the weights resident, the
    # rest streamed from disk; half the KV cache of a 64-row block in RAM, half on disk (all of
    # it in RAM came to the whole KV allowance and was OOM-killed under the cap at opt-1.3b)
    "w25-disk75-32x2": {
        "gpu_batch_size": 32, "num_gpu_batches": 2,
        "weights": {"device": 25, "disk": 75}, "cache": {"device": 50, "disk": 50},
        "activations": {"device": 100},
    },
    # quick variants (small row counts)
    "all-device-16x4": {
        "gpu_batch_size": 16, "num_gpu_batches": 4,
        "weights": {"device": 100}, "cache": {"device": 100}, "activations": {"device": 100},
    },
    "w25-disk75-16x2": {
        "gpu_batch_size": 16, "num_gpu_batches": 2,
        "weights": {"device": 25, "disk": 75}, "cache": {"device": 100},
        "activations": {"device": 100},
    },
}


def policy_spec(text: str) -> str | dict[str, Any] | None:
    """'auto' / 'none' / a hand policy name / inline JSON -> what build_policy takes."""
    if text == "none":
        return None
    if text == "auto":
        return "auto"
    if text in HAND_POLICIES:
        return HAND_POLICIES[text]
    if text.lstrip().startswith("{"):
        return json.loads(text)
    names = sorted(HAND_POLICIES)
    raise ValueError(f"unknown policy {text!r}: use auto, none, JSON or one of {names}")


def build_policy(spec: str | dict[str, Any] | None):
    """A Policy from plain data (placements given as {tier: percent}; missing tiers are 0)."""
    if spec is None or isinstance(spec, str):
        return spec
    from engine import Placement, Policy

    kwargs = dict(spec)
    for kind in ("weights", "cache", "activations"):
        if isinstance(kwargs.get(kind), Mapping):
            tiers = {"device": 0.0, "host": 0.0, "disk": 0.0, **kwargs[kind]}
            kwargs[kind] = Placement(**tiers)
    return Policy(**kwargs)


def to_jsonable(value: Any) -> Any:
    """Engine stats / policies (dataclasses, mappings, tensors, numbers) as plain JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(item) for item in value]
    if hasattr(value, "tolist"):  # tensors, numpy scalars
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def engine_stats(engine: Any) -> dict:
    stats = getattr(engine, "stats", None)
    if callable(stats):
        stats = stats()
    if hasattr(stats, "as_dict"):
        stats = stats.as_dict()
    return to_jsonable(stats) if stats is not None else {}


def chosen_policy(engine: Any) -> Any:
    for name in ("policy", "plan"):
        if getattr(engine, name, None) is not None:
            return to_jsonable(getattr(engine, name))
    return None


def load_engine(args: argparse.Namespace, prompts: list[list[int]], offload_dir: Path,
                memory: dict | None) -> Any:
    """`auto` is planned for this very workload (rows, prompt lengths, new tokens, shared
    prefix), as `fw.LLM` plans a column; the engine's own "auto" plans a nominal one."""
    import torch

    from engine import Engine, Workload, plan

    policy = build_policy(policy_spec(args.policy))
    dtype = getattr(torch, args.dtype)
    if policy == "auto":
        prefix = args.prefix_len if args.share_prefix else 0
        lengths = Counter(len(prompt) - prefix for prompt in prompts)
        workload = Workload(rows=len(prompts), prompt_len=dict(lengths), gen_len=args.gen_len,
                            shared_prefix=prefix)
        policy = plan(args.model, workload, memory=memory, device=args.device,
                      dtype=dtype, offload_dir=offload_dir,
                      allow_compression=args.allow_compression).policy
    return Engine.from_pretrained(
        str(args.model), policy=policy, device=args.device, dtype=dtype,
        offload_dir=str(offload_dir), memory=memory,
    )


def timed_generate(
    engine: Any, prompts: list[list[int]], args: argparse.Namespace, meter: Meter
) -> tuple[list[list[int]], dict]:
    """Warm-up (untimed for tok/s) then the timed run. Stats are snapshotted after each, since
    the engine's counters may accumulate across generate calls."""
    import torch

    from engine import SamplingParams

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    snapshots = {}
    if args.warmup_tokens:
        with meter.phase("warmup", sync):
            warm = warmup_prompts(prompts, args.warmup_rows)
            engine.generate(warm, SamplingParams(args.warmup_tokens, ignore_eos=True))
        snapshots["engine_stats_after_warmup"] = engine_stats(engine)
    params, prefix = SamplingParams(args.gen_len, ignore_eos=True), None
    if args.share_prefix and args.prefix_len:  # the engine runs the prefix once
        prefix, prompts = prompts[0][: args.prefix_len], [p[args.prefix_len :] for p in prompts]
    with meter.phase("generate", sync):
        outputs = engine.generate(prompts, params, prefix=prefix) if prefix else \
            engine.generate(prompts, params)
    snapshots["engine_stats"] = engine_stats(engine)
    return [list(row) for row in outputs], snapshots


def planner_prediction(engine: Any, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    """What the planner's cost model predicts for the policy that ran, on this machine's cached
    profile: tokens/s of the timed generate and bytes over the disk link (issue 11: a plan
    that it cannot predict well is one it should not choose)."""
    from engine import Workload
    from engine.model import layer_specs
    from engine.policy import predict
    from engine.policy.hardware import load_profile
    from engine.policy.predict import predicted_disk_bytes

    prefix = args.prefix_len if args.share_prefix else 0
    workload = Workload(rows=len(prompts), gen_len=args.gen_len, shared_prefix=prefix,
                        prompt_len=dict(Counter(len(prompt) - prefix for prompt in prompts)))
    layers = layer_specs(engine.config)
    profile = load_profile(args.device, args.offload_dir)
    prediction = predict(engine.config, layers, engine.policy, workload, profile, engine.dtype)
    return {"tokens_per_s": prediction.tokens_per_s,
            "bytes": predicted_disk_bytes(engine.config, layers, engine.policy, workload,
                                          engine.dtype)}


def run(args: argparse.Namespace) -> dict:
    setup_torch(args)
    prompts = prompts_for(args)
    memory = json.loads(args.memory) if args.memory else None
    offload_dir = Path(tempfile.mkdtemp(prefix="ours-offload-", dir=args.offload_dir))
    meter = Meter()
    try:
        with meter.phase("load"):
            engine = load_engine(args, prompts, offload_dir, memory)
        try:
            outputs, stats = timed_generate(engine, prompts, args, meter)
            policy = chosen_policy(engine)
            stats["planner_prediction"] = planner_prediction(engine, prompts, args)
        finally:
            engine.close()
    finally:
        shutil.rmtree(offload_dir, ignore_errors=True)
    extra = {"policy": args.policy, "chosen_policy": policy, "memory": memory,
             "share_prefix": args.share_prefix, **stats}
    return build_result(args, "ours", prompts, outputs, meter, extra)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--policy", default="auto", help="auto | none | hand policy | JSON")
    parser.add_argument("--memory", default=None, help='JSON: {"device": "2GiB", ...}')
    parser.add_argument("--offload-dir", type=Path, default=None, help="parent of the folder")
    parser.add_argument("--allow-compression", action="store_true",
                        help="auto may choose 4-bit weights / KV cache (outputs change)")
    parser.add_argument("--share-prefix", action="store_true",
                        help="pass the first --prefix-len ids as the engine's shared prefix")
    emit(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
