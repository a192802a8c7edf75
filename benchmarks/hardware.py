"""Probes of the machine's rates: matmul FLOP/s in a dtype, memory bandwidth, offload-link
bandwidth.

Each probe keeps the best of a few repeats (the floor is what the machine *can* do). On a CPU
box the fast memory is RAM and the offload link is the disk; on a GPU, HBM and pinned PCIe.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

MiB = 1024**2


@dataclass(frozen=True)
class Hardware:
    device: str
    matmul_flops: float  # in matmul_dtype, prefill-shaped F.linear (8192x1024 @ 1024x3072)
    fast_bandwidth: float  # bytes/s: torch copy_ counting read + write (RAM or HBM)
    offload_bandwidth: float  # bytes/s: disk sequential read (CPU) / pinned host->device (GPU)
    offload_method: str  # "O_DIRECT", "fadvise" or "pinned-h2d"
    measured_at: str
    matmul_dtype: str = "bfloat16"  # "bfloat16" or "float32"


def best_seconds(fn: Callable[[], None], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up: kernel selection, page faults
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync_for(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def matmul_tokens(quick: bool) -> int:
    """Rows of the matmul probe (a quarter for --quick)."""
    return 8192 // 4 if quick else 8192


def measure_matmul_flops(device: str = "cpu", dtype: str = "bfloat16", tokens: int = 8192,
                         repeats: int = 5) -> float:
    """x[tokens, 1024] @ w[3072, 1024]^T in `dtype`: the shape of a prefill projection."""
    x = torch.randn(tokens, 1024, dtype=getattr(torch, dtype), device=device)
    w = torch.randn(3072, 1024, dtype=getattr(torch, dtype), device=device)
    with torch.inference_mode():
        seconds = best_seconds(lambda: F.linear(x, w), repeats, _sync_for(device))
    return 2 * tokens * 1024 * 3072 / seconds


def measure_copy_bandwidth(device: str = "cpu", nbytes: int = 512 * MiB, repeats: int = 5) -> float:
    """dst.copy_(src) in one memory; bytes counted as read + write."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = best_seconds(lambda: dst.copy_(src), repeats, _sync_for(device))
    return 2 * nbytes / seconds


def measure_h2d_bandwidth(nbytes: int = 512 * MiB, repeats: int = 5) -> float:
    src = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    seconds = best_seconds(lambda: dst.copy_(src, non_blocking=True), repeats,
                           torch.cuda.synchronize)
    return nbytes / seconds


def measure_disk_read(scratch_dir: Path, nbytes: int = 1024 * MiB, repeats: int = 3
                      ) -> tuple[float, str]:
    """Sequential read of a scratch file, bypassing the page cache: O_DIRECT where the file
    system allows it, else a read after posix_fadvise(DONTNEED). -> (bytes/s, method)."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    path = scratch_dir / f"disk-probe-{os.getpid()}.bin"
    try:
        _write_probe_file(path, nbytes)
        try:
            best = min(_timed_read(path, direct=True) for _ in range(repeats))
            method = "O_DIRECT"
        except OSError:
            best = min(_timed_read(path, direct=False) for _ in range(repeats))
            method = "fadvise"
    finally:
        path.unlink(missing_ok=True)
    return nbytes / best, method


def _write_probe_file(path: Path, nbytes: int) -> None:
    chunk = os.urandom(16 * MiB)
    with path.open("wb") as handle:
        for _ in range(max(1, nbytes // len(chunk))):
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())


def _timed_read(path: Path, direct: bool) -> float:
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags)
    try:
        if not direct:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buffer = mmap.mmap(-1, 16 * MiB)  # page aligned, as O_DIRECT requires
        start = time.perf_counter()
        while os.readv(fd, [buffer]) > 0:
            pass
        return time.perf_counter() - start
    finally:
        os.close(fd)


def measure_hardware(device: str = "cpu", dtype: str = "bfloat16",
                     scratch_dir: Path | None = None, quick: bool = False) -> Hardware:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch.cuda.is_available() is False")
    scale = 4 if quick else 1
    matmul = measure_matmul_flops(device, dtype, tokens=matmul_tokens(quick))
    fast = measure_copy_bandwidth(device, nbytes=512 * MiB // scale)
    if device == "cuda":
        offload, method = measure_h2d_bandwidth(512 * MiB // scale), "pinned-h2d"
    else:
        offload, method = measure_disk_read(scratch_dir or Path("."), 1024 * MiB // scale)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Hardware(device, matmul, fast, offload, method, now, matmul_dtype=dtype)
