"""What every runner shares: its command line, the prompts, the process's own measurements, and
the one JSON line it prints.

A runner is one system in one process: `python -m benchmarks.runners.<system> --model DIR
--rows N --prompt-len L --gen-len G [--batch B] [--dtype bfloat16|float32] ...`. Its last
stdout line is the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.dtypes import DTYPES


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--prompt-len", type=int, required=True,
                        help="ids per prompt (wrangling: prefix + median row length)")
    parser.add_argument("--prompts", default="random", choices=["random", "wrangling"],
                        help="wrangling: a shared --prefix-len prefix, then long-tailed rows")
    parser.add_argument("--prefix-len", type=int, default=0)
    parser.add_argument("--gen-len", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0, help="prompt seed (same for all systems)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                        help="weights and compute (benchmarks.run gives every system one)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--variant", default="", help="label carried into the result")
    parser.add_argument("--warmup-tokens", type=int, default=2,
                        help="untimed warm-up: the first --warmup-rows prompts, this many new "
                        "ids (lazy loading, kernel selection, thread pools); 0: none")
    parser.add_argument("--warmup-rows", type=int, default=4)
    return parser


def warmup_prompts(prompts: list[list[int]], rows: int) -> list[list[int]]:
    return prompts[: max(1, min(rows, len(prompts)))]


def prompts_for(args: argparse.Namespace) -> list[list[int]]:
    vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    return make_prompts(args.prompts, args.rows, args.prompt_len, args.prefix_len, vocab,
                        args.seed)


def make_prompts(kind: str, rows: int, prompt_len: int, prefix_len: int, vocab: int,
                 seed: int) -> list[list[int]]:
    """The same prompts in every process (the orchestrator uses this for the floor). torch is
    imported here, not with this module: the llama.cpp runner stays torch-free (its RSS counts)."""
    from benchmarks.prompts import random_prompts, wrangling_prompts

    if kind == "wrangling":
        return wrangling_prompts(rows, prefix_len, prompt_len - prefix_len, vocab, seed=seed)
    return random_prompts(rows, prompt_len, vocab, seed=seed)


def read_proc_io() -> dict[str, int]:
    """This process's /proc/self/io counters (read_bytes: what came from the block device)."""
    counters: dict[str, int] = {}
    with open("/proc/self/io") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            counters[key.strip()] = int(value)
    return counters


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass
class Meter:
    """Wall time and disk I/O per phase ("load", "generate")."""

    seconds: dict[str, float] = field(default_factory=dict)
    read_bytes: dict[str, int] = field(default_factory=dict)
    write_bytes: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str, sync: Callable[[], None] = lambda: None) -> Iterator[None]:
        io_before = read_proc_io()
        start = time.perf_counter()
        yield
        sync()
        self.seconds[name] = time.perf_counter() - start
        io_after = read_proc_io()
        self.read_bytes[name] = io_after["read_bytes"] - io_before["read_bytes"]
        self.write_bytes[name] = io_after["write_bytes"] - io_before["write_bytes"]


def fingerprint(outputs: list[list[int]]) -> str:
    """A short hash of the generated ids, to see which systems agree token for token."""
    return hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16]


def build_result(
    args: argparse.Namespace,
    system: str,
    prompts: list[list[int]],
    outputs: list[list[int]],
    meter: Meter,
    extra: dict | None = None,
) -> dict:
    gen_tokens = sum(len(row) for row in outputs)
    generate_s = meter.seconds["generate"]
    total_s = generate_s + meter.seconds.get("load", 0.0) + meter.seconds.get("warmup", 0.0)
    return {
        "system": system,
        "variant": args.variant,
        "model": str(args.model),
        "rows": args.rows,
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "device": args.device,
        "dtype": args.dtype,
        "prompts": getattr(args, "prompts", "random"),
        "prompt_tokens": sum(len(row) for row in prompts),
        "gen_tokens": gen_tokens,
        "tokens_ok": gen_tokens == args.rows * args.gen_len and len(outputs) == args.rows,
        "load_s": meter.seconds.get("load", 0.0),
        "warmup_s": meter.seconds.get("warmup", 0.0),
        "generate_s": generate_s,
        "tok_per_s": gen_tokens / generate_s,
        "rows_per_s": len(outputs) / generate_s,
        "e2e_tok_per_s": gen_tokens / total_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "read_bytes": sum(meter.read_bytes.values()),
        "read_bytes_generate": meter.read_bytes["generate"],
        "warmup_tokens": args.warmup_tokens,
        "write_bytes": sum(meter.write_bytes.values()),
        "outputs_sha": fingerprint(outputs),
        "pid": os.getpid(),
        **(extra or {}),
    }


def emit(result: dict) -> None:
    """The result as the last line of stdout (libraries may print before it)."""
    sys.stdout.flush()
    print(json.dumps(result, default=str), flush=True)


def batches(prompts: list[list[int]], batch_size: int) -> Iterator[list[list[int]]]:
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, len(prompts), batch_size):
        yield prompts[start : start + batch_size]


def setup_torch(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
