"""The floor: the least time the machine allows for a workload, to compare every run against.

floor = max(FLOPs / measured matmul rate, for each link: bytes that must cross it /
its measured bandwidth), minimised over how the rows are split into blocks, in the run's dtype
(bf16 or fp32: the matmul rate measured in it, 2 or 4 bytes per weight and KV element). Links:
- `fast`: the memory compute reads from (RAM on a CPU box, HBM on a GPU): every weight once
  per forward pass per block, the KV cache once per decode step, KV writes once.
- `offload`: what does not fit the fast-memory budget comes over the next link (disk on a CPU
  box, PCIe on a GPU), once per pass per block. Reads only; uncompressed.
Compression (4-bit weights / cache) can go below this floor; the report says so.

    python -m benchmarks.floor [--device cuda] [--dtype float32] [--refresh]   # measure, print
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field

from benchmarks import CACHE_DIR
from benchmarks.dtypes import DTYPE_CHOICES, resolve_dtype
from benchmarks.hardware import Hardware, matmul_tokens, measure_hardware, measure_matmul_flops
from benchmarks.machine import cpu_model, matmul_flags
from benchmarks.modelinfo import ModelShape

HARDWARE_CACHE = CACHE_DIR / "hardware.json"


@dataclass(frozen=True)
class WorkloadShape:
    rows: int
    prompt_len: float  # the mean, for unequal prompts (a lower bound stays a lower bound)
    gen_len: int
    shared_prefix: int = 0  # leading ids every prompt shares: computed and stored once


@dataclass(frozen=True)
class Floor:
    flops: float
    compute_s: float
    link_bytes: dict[str, float]  # at the best block count
    link_s: dict[str, float]
    num_blocks: int
    seconds: float
    bound: str  # "compute" or a link name
    gen_tokens: int
    tok_per_s: float = field(default=0.0)

    def as_dict(self) -> dict:
        return asdict(self)


def flops(shape: ModelShape, work: WorkloadShape) -> float:
    """Matmul FLOPs (2 per multiply-add) of prefill + decode, attention included."""
    prefix = work.shared_prefix
    own_tokens = work.prompt_len - prefix + work.gen_len - 1  # the last id is not fed back
    fed_tokens = work.rows * own_tokens + prefix
    dense = 2 * shape.matmul_params * fed_tokens + 2 * shape.head_params * work.rows * work.gen_len
    own_prefill = _triangle(work.prompt_len) - _triangle(prefix)  # keys seen by own ids
    attended = work.rows * (own_prefill + sum(_decode_contexts(work))) + _triangle(prefix)
    attention = 4 * shape.q_dim * shape.num_layers * attended  # QK^T and PV
    return float(dense + attention)


def link_bytes(
    shape: ModelShape, work: WorkloadShape, num_blocks: int, fast_budget: float | None
) -> dict[str, float]:
    """Bytes over each link when the rows go as num_blocks equal blocks (in shape.dtype)."""
    streamed = (shape.matmul_params + shape.head_params) * shape.dtype_bytes  # every pass
    kv_token = shape.kv_bytes_per_token()
    block_rows = work.rows / num_blocks
    prefix = work.shared_prefix
    passes_kv = [0.0] + [(block_rows * (ctx - prefix) + prefix) * kv_token
                         for ctx in _decode_contexts(work)]
    kv_writes = (work.rows * (work.prompt_len - prefix + work.gen_len - 1) + prefix) * kv_token
    fast = num_blocks * (work.gen_len * streamed + sum(passes_kv)) + kv_writes
    out = {"fast": float(fast)}
    if fast_budget is not None:
        spill = sum(max(0.0, streamed + kv - fast_budget) for kv in passes_kv)
        out["offload"] = float(num_blocks * spill)
    return out


def compute_floor(
    shape: ModelShape,
    work: WorkloadShape,
    hardware: Hardware,
    fast_budget: float | None = None,
) -> Floor:
    """fast_budget: bytes of fast memory for weights + KV cache (None: everything fits). The
    shape's dtype (its bytes) and the hardware's matmul rate must be of the same dtype."""
    if hardware.matmul_dtype != shape.dtype:
        raise ValueError(f"a floor in {shape.dtype} needs the matmul rate in {shape.dtype}, "
                         f"not {hardware.matmul_dtype}")
    total_flops = flops(shape, work)
    compute_s = total_flops / hardware.matmul_flops
    bandwidth = {"fast": hardware.fast_bandwidth, "offload": hardware.offload_bandwidth}
    best: tuple[float, int, dict[str, float]] | None = None
    for num_blocks in range(1, work.rows + 1):
        moved = link_bytes(shape, work, num_blocks, fast_budget)
        seconds = max([compute_s] + [moved[link] / bandwidth[link] for link in moved])
        if best is None or seconds < best[0] - 1e-12:
            best = (seconds, num_blocks, moved)
    assert best is not None
    seconds, num_blocks, moved = best
    link_s = {link: moved[link] / bandwidth[link] for link in moved}
    bound = max(link_s, key=link_s.__getitem__) if max(link_s.values()) > compute_s else "compute"
    gen_tokens = work.rows * work.gen_len
    return Floor(total_flops, compute_s, moved, link_s, num_blocks, seconds, bound, gen_tokens,
                 tok_per_s=gen_tokens / seconds if seconds > 0 else math.inf)


def cache_key(device: str) -> str:
    """One machine's entry in .cache/hardware.json: CPUs of one model name may differ in what
    sets their matmul rate (an AVX2-only "AMD EPYC" and one with avx512_bf16)."""
    return f"{device}|{cpu_model()}|{','.join(matmul_flags())}|{len(os.sched_getaffinity(0))}"


def load_or_measure(device: str = "cpu", dtype: str = "bfloat16", refresh: bool = False,
                    quick: bool = False) -> Hardware:
    """The hardware profile for `device` with the matmul rate in `dtype`, cached in
    .cache/hardware.json (one entry per `cache_key`): the links are measured once per machine,
    the matmul rate once per dtype (kept beside the other dtype's)."""
    key = cache_key(device)
    cached = json.loads(HARDWARE_CACHE.read_text()) if HARDWARE_CACHE.exists() else {}
    entry = None if refresh else cached.get(key)
    if entry is None:
        entry = _cache_entry(measure_hardware(device, dtype, scratch_dir=CACHE_DIR, quick=quick))
    rates = rates_by_dtype(entry)
    if dtype not in rates:
        rates[dtype] = measure_matmul_flops(device, dtype, tokens=matmul_tokens(quick))
    entry = {**entry, "matmul_flops": rates}
    if cached.get(key) != entry:
        cached[key] = entry
        HARDWARE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        HARDWARE_CACHE.write_text(json.dumps(cached, indent=2) + "\n")
    return Hardware(**{**entry, "matmul_flops": rates[dtype], "matmul_dtype": dtype})


def rates_by_dtype(entry: dict) -> dict[str, float]:
    """A cached entry's matmul rates, dtype -> FLOP/s (an entry from before the dtype choice
    holds one number: the probe was bf16 then)."""
    rates = entry["matmul_flops"]
    return dict(rates) if isinstance(rates, dict) else {"bfloat16": rates}


def _cache_entry(hardware: Hardware) -> dict:
    entry = asdict(hardware)
    entry["matmul_flops"] = {entry.pop("matmul_dtype"): hardware.matmul_flops}
    return entry


def _triangle(length: float) -> float:
    return length * (length + 1) / 2


def _decode_contexts(work: WorkloadShape) -> list[float]:
    """Keys each decode step attends over: prompt + ids generated so far (incl. the new one)."""
    return [work.prompt_len + step for step in range(1, work.gen_len)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="measure the machine's rates (cached)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--refresh", action="store_true", help="measure again")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="the matmul probe's dtype (auto: as benchmarks.run picks it)")
    parser.add_argument("--quick", action="store_true", help="smaller probes")
    args = parser.parse_args(argv)
    dtype = resolve_dtype(args.dtype, args.device)
    hardware = load_or_measure(args.device, dtype, args.refresh, args.quick)
    print(json.dumps(asdict(hardware), indent=2))


if __name__ == "__main__":
    main()
