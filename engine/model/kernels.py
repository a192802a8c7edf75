"""Linear layers on the CPU in bf16: oneDNN with prepacked weights and fused epilogues.

`F.linear` hands oneDNN a plain [N, K] weight, which it re-lays out into its blocked format on
every call: at decode shapes (a hundred rows) that costs more than the matmul itself. A weight
that stays where it is used (a CPU engine's device or host tier) is packed once, in place of its
plain copy (the same bytes, the same ledger charge), the first time a runner loads it. A packed
weight's matmul also applies what follows it in its epilogue, on the fp32 accumulator: the
bias, SiLU / ReLU, the gate product, the residual add, each otherwise one more pass over a
[rows, width] tensor in memory.

Plain (dense) weights, i.e. fp32, GPU, 4-bit or streamed from disk, never reach this module's
matmuls: `engine.model.math` computes them with plain torch ops in the order it always has, so
their outputs do not change. Packed bf16 outputs differ from plain bf16 by bf16 rounding (the
epilogue rounds once where the plain ops round after each op).
"""

from __future__ import annotations

import torch

from engine.storage import Placed

# engine activation name -> oneDNN eltwise post-op; others are applied after the matmul
FUSED_ACTIVATIONS = {"silu": "swish", "relu": "relu"}
_EMBEDDINGS = frozenset({"tokens", "positions"})  # read by F.embedding: stay plain


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU's matmuls run bf16 in hardware (oneDNN's bf16 path: AVX-512 cores,
    avx512_bf16, AMX). Without it (an AVX2-only CPU) every bf16 block is converted to fp32 and
    back in software: 6x slower than fp32 on an AVX2 EPYC (0.018 vs 0.105 TFLOP/s, 2048^3)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def packing_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN's bf16 matmul on this CPU, for a CPU engine in bf16."""
    return device.type == "cpu" and dtype == torch.bfloat16 and cpu_multiplies_bf16()


def is_packed(weight: torch.Tensor) -> bool:
    return weight.is_mkldnn


def packable(name: str, placed: Placed) -> bool:
    """A 2-D matmul weight held in memory as plain bf16 (not 4-bit codes, not an embedding)."""
    tensor = placed.tensor
    return (name not in _EMBEDDINGS and placed.quant is None and tensor is not None
            and not tensor.is_mkldnn and tensor.dim() == 2 and tensor.dtype == torch.bfloat16)


def pack_homes(homes: dict[str, Placed], rows_hint: int = 128) -> None:
    """Replace each packable home tensor [N, K] of one layer by its oneDNN-packed copy, so that
    its plain copy is freed (every later lease of it reads the packed one). `rows_hint` picks
    the blocking; any row count runs on it."""
    for name, placed in homes.items():
        if packable(name, placed):
            placed.tensor = torch.ops.mkldnn._reorder_linear_weight(placed.tensor, rows_hint)


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  activation: str | None = None) -> torch.Tensor:
    """x [..., K] @ packed weight [N, K] (+ bias, then `activation` if given, which must be
    one of FUSED_ACTIVATIONS) -> [..., N]."""
    post = "none" if activation is None else FUSED_ACTIVATIONS[activation]
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, post, [], "")


def packed_linear_binary(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         op: str, other: torch.Tensor) -> torch.Tensor:
    """(x [..., K] @ packed weight [N, K] + bias) `op` other [..., N]; op: "add" | "mul"."""
    return torch.ops.mkldnn._linear_pointwise.binary(x.contiguous(), other.contiguous(), weight,
                                                     bias, op)
