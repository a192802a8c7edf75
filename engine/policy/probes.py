"""Quick probes of this machine's rates (about two seconds in all) for `HardwareProfile`.

Each probe keeps the best of a few repeats. On a CPU-only machine the device tier is a pool in
RAM, so host<->device bandwidth is the RAM copy bandwidth; disk bandwidth is measured with the
engine's own offload-file reader and writer (O_DIRECT where the file system allows it).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.compression import dequantize, quantize
from engine.config import ModelConfig
from engine.model import layer_specs, math
from engine.model.step import StepInputs
from engine.policy.hardware import HardwareProfile, disk_root, free_bytes
from engine.storage import disk
from engine.storage.offload_dirs import scratch_dir

MiB = 1024**2


def _best(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - begin)
    return max(best, 1e-9)


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def copy_bandwidth(src_device: str, dst_device: str, num_bytes: int = 64 * MiB) -> float:
    """Bytes/s of one copy; host buffers are pinned when the other side is a GPU."""
    pin = "cuda" in (src_device, dst_device) and src_device != dst_device
    src = torch.ones(num_bytes, dtype=torch.uint8, device=src_device)
    dst = torch.empty(num_bytes, dtype=torch.uint8, device=dst_device)
    src, dst = (src.pin_memory() if pin and src_device == "cpu" else src,
                dst.pin_memory() if pin and dst_device == "cpu" else dst)
    sync = _sync("cuda" if "cuda" in (src_device, dst_device) else "cpu")
    return num_bytes / _best(lambda: dst.copy_(src, non_blocking=pin), 3, sync)


def disk_rates(directory: Path, num_bytes: int = 32 * MiB) -> dict[str, float]:
    """Offload-file rates in `directory`: bandwidth of large reads and writes, and the fixed
    cost of one small read (4 KiB) and one small write (64 KiB, less its transfer time), as the
    median of a few: writes that sync to the device cost milliseconds each."""
    with scratch_dir(directory, prefix="flexgen-probe-") as tmp:  # owned: kill -9 safe
        big, small = Path(tmp) / "big.bin", Path(tmp) / "small.bin"
        data = torch.ones(num_bytes, dtype=torch.uint8)
        write = num_bytes / _best(lambda: disk.write_file(big, data), 2, lambda: None)
        read = num_bytes / _best(lambda: disk.read_file(big, num_bytes), 2, lambda: None)
        chunk = torch.ones(64 * 1024, dtype=torch.uint8)
        writes = _samples(lambda: disk.write_file(small, chunk), 7)
        reads = _samples(lambda: disk.read_file(small, 4096), 9)
    return {"read": read, "write": write, "read_latency": statistics.median(reads),
            "write_latency": max(statistics.median(writes) - chunk.numel() / write, 0.0)}


def _samples(fn: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        begin = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - begin)
    return samples


def matmul_flops(device: str, dtype: torch.dtype, tokens: int = 2048, dim: int = 2048) -> float:
    x = torch.randn(tokens, dim, dtype=dtype, device=device)
    w = torch.randn(dim, dim, dtype=dtype, device=device)
    with torch.inference_mode():
        seconds = _best(lambda: F.linear(x, w), 3, _sync(device))
    return 2 * tokens * dim * dim / seconds


def cpu_attention_flops(rows: int = 4, heads: int = 16, keys: int = 1024, dim: int = 64) -> float:
    """One decode step of attention over a host-resident cache, on the CPU in fp32."""
    q = torch.randn(rows, heads, 1, dim)
    k, v = torch.randn(rows, heads, keys, dim), torch.randn(rows, heads, keys, dim)
    with torch.inference_mode():
        seconds = _best(lambda: F.scaled_dot_product_attention(q, k, v), 3, lambda: None)
    return 4 * rows * heads * keys * dim / seconds


def matmul_half_rows(device: str, peak: float, rows: int = 32) -> float:
    """Rows at which a bf16 matmul runs at half of `peak`, from the rate of a `rows`-row one,
    with rate(r) = peak * r / (r + half)."""
    rate = matmul_flops(device, torch.bfloat16, tokens=rows)
    return rows * max(peak / rate - 1.0, 0.0)


def dequant_rate(device: str, rows: int = 1024, cols: int = 1024) -> float:
    """Elements/s at which the engine dequantizes 4-bit weights (`engine.compression`)."""
    flat, meta = quantize(torch.randn(rows, cols, device=device).to(torch.bfloat16))
    with torch.inference_mode():
        seconds = _best(lambda: dequantize(flat, meta), 3, _sync(device))
    return rows * cols / seconds


def call_overhead(device: str) -> float:
    """Seconds of one tiny decoder-layer compute plus a thread-pool round trip: the fixed cost
    the engine pays per (layer, GPU batch) however small the work."""
    raw = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64,
           "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
           "intermediate_size": 128, "max_position_embeddings": 64}
    cfg = ModelConfig.from_dict(raw)
    weights = {spec.name: torch.randn(spec.shape, device=device) * 0.1
               for spec in layer_specs(cfg)[1].weights}
    x = torch.randn(1, 1, 64, device=device)
    cache = torch.zeros(2, 1, cfg.num_kv_heads, 8, cfg.head_dim, device=device)
    step = StepInputs.build(torch.ones(1, 8, dtype=torch.bool, device=device), 4, 1)
    samples = []
    with torch.inference_mode(), ThreadPoolExecutor(1) as pool:
        for _ in range(40):
            begin = time.perf_counter()
            pool.submit(lambda: None).result()
            math.decoder(cfg, weights, x, (cache[0], cache[1]), step)
            _sync(device)()
            samples.append(time.perf_counter() - begin)
    return statistics.median(samples[5:])


def measure_profile(device: str, offload_dir: str | Path | None = None) -> HardwareProfile:
    root = disk_root(offload_dir)
    if not os.access(root, os.W_OK):
        root = Path(tempfile.gettempdir())
    rates = disk_rates(root)
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])
    return HardwareProfile(
        device=device,
        free_bytes=free_bytes(device, offload_dir),
        bandwidth={
            "disk->host": rates["read"], "host->disk": rates["write"],
            "host->device": copy_bandwidth("cpu", device),
            "device->host": copy_bandwidth(device, "cpu"),
            "device->device": copy_bandwidth(device, device),
        },
        matmul_flops={str(dtype).removeprefix("torch."): matmul_flops(device, dtype)
                      for dtype in dtypes},
        cpu_attention_flops=cpu_attention_flops(),
        call_overhead_s=call_overhead(device),
        disk_latency_s=rates["read_latency"],
        disk_write_latency_s=rates["write_latency"],
        dequant_rate=dequant_rate(device),
        matmul_half_rows=matmul_half_rows(device, matmul_flops(device, torch.bfloat16)),
    )
