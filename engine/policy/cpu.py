"""Which CPU this is, as far as matmul speed goes: its model name and the instruction sets that
decide whether bf16 runs in hardware (AVX-512 bf16, AMX) or is emulated (AVX2 only).

Machines that share a model name can differ here: an "AMD EPYC" VM has been seen both with
AVX2 only (bf16 matmul 0.018 TFLOP/s) and with avx512_bf16 (0.38), so a cached rate keyed by
the name alone would be read on the wrong machine.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# the flags that move matmul rates by whole factors (in the order of /proc/cpuinfo's names)
MATMUL_FLAGS = ("fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo_field(text: str, name: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    return _cpuinfo_field(text, "model name") or platform.processor() or platform.machine()


def matmul_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The MATMUL_FLAGS this CPU has, in MATMUL_FLAGS' order; () where /proc/cpuinfo is unreadable
    (not Linux x86)."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    present = set(_cpuinfo_field(text, "flags").split())
    return tuple(flag for flag in MATMUL_FLAGS if flag in present)


@functools.cache  # the CPU does not change under a running process
def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
