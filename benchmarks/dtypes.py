"""The one dtype a benchmark invocation runs every system in: weights, compute and KV cache.

`auto` is what a user of this machine would run: on a CPU the engine's default
(`engine.defaults.cpu_dtype`: bf16 only where the CPU multiplies bf16 in hardware, else fp32,
since an AVX2-only CPU emulates bf16 matmuls 6x slower than fp32), on CUDA bf16. Standard
library only (the vLLM runner, in vLLM's venv, imports it); `engine` only to resolve `auto`.
"""

from __future__ import annotations

DTYPES = ("bfloat16", "float32")
DTYPE_CHOICES = ("auto", *DTYPES)
ITEMSIZE = {"bfloat16": 2, "float32": 4}
SHORT_NAMES = {"bfloat16": "bf16", "float32": "fp32"}


def resolve_dtype(choice: str, device: str) -> str:
    """'auto' -> the dtype this machine runs fastest (see the module); a named dtype as is."""
    if choice != "auto":
        if choice not in DTYPES:
            raise ValueError(f"unknown dtype {choice!r}; dtypes are {DTYPE_CHOICES}")
        return choice
    if device == "cuda":
        return "bfloat16"
    from engine.defaults import cpu_dtype

    return str(cpu_dtype()).removeprefix("torch.")


def short_name(dtype: str) -> str:
    """'bfloat16' -> 'bf16', 'float32' -> 'fp32' (for the report's text)."""
    return SHORT_NAMES[dtype]
