"""HF Accelerate big-model offload: `device_map="auto"` under a memory budget, the rest of the
weights on disk (read straight from the safetensors files, or from offload_folder).

    python -m benchmarks.runners.accelerate_offload --model DIR --rows 256 --prompt-len 128 \
        --gen-len 32 --batch 32 --budget 650000000 --offload-dir /tmp/offload
"""

from __future__ import annotations

import argparse
import collections
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from benchmarks.runners.common import (
    Meter,
    base_parser,
    build_result,
    emit,
    prompts_for,
    setup_torch,
    warmup_prompts,
)
from benchmarks.runners.hf import generate_all, sync_for


def max_memory(args: argparse.Namespace) -> dict[int | str, int]:
    """CPU box: the budget is RAM for weights. GPU: the budget is device memory, and host RAM
    gets --host-budget (default: none, so the rest goes to disk)."""
    if args.device == "cuda":
        return {0: args.budget, "cpu": args.host_budget or 0}
    return {"cpu": args.budget}


def load(args: argparse.Namespace, offload_dir: Path):
    return AutoModelForCausalLM.from_pretrained(
        args.model,
        dtype=getattr(torch, args.dtype),
        device_map="auto",
        max_memory=max_memory(args),
        offload_folder=str(offload_dir),
    ).eval()


def run(args: argparse.Namespace) -> dict:
    setup_torch(args)
    prompts = prompts_for(args)
    offload_dir = Path(tempfile.mkdtemp(prefix="accel-offload-", dir=args.offload_dir))
    meter = Meter()
    try:
        with meter.phase("load", sync_for(args.device)):
            model = load(args, offload_dir)
        placement = collections.Counter(str(tier) for tier in model.hf_device_map.values())
        input_device = "cuda" if args.device == "cuda" else "cpu"
        if args.warmup_tokens:
            with meter.phase("warmup", sync_for(args.device)):
                warm = warmup_prompts(prompts, args.warmup_rows)
                generate_all(model, warm, args.batch, args.warmup_tokens, input_device)
        with meter.phase("generate", sync_for(args.device)):
            outputs = generate_all(model, prompts, args.batch, args.gen_len, input_device)
    finally:
        shutil.rmtree(offload_dir, ignore_errors=True)
    extra = {"batch": args.batch, "budget_bytes": args.budget, "device_map": dict(placement)}
    return build_result(args, "accelerate_offload", prompts, outputs, meter, extra)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--budget", type=int, required=True, help="bytes of memory for weights")
    parser.add_argument("--host-budget", type=int, default=None, help="GPU only: host RAM bytes")
    parser.add_argument("--offload-dir", type=Path, default=None, help="parent of the folder")
    emit(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
