"""A prefill in row chunks: one decoder layer over a few thousand tokens at a time.

Every op of a decoder layer works on each row alone (norms, projections, attention to the
row's own cache), so a layer over B rows equals the layer over consecutive row slices of B,
each writing its own rows of the KV cache. A whole batch's prefill makes temporaries of
[B * T, intermediate]: hundreds of MB at 64 rows x 256 tokens, each matmul output and each
element-wise pass a round trip to memory over freshly faulted pages. Cut into chunks of
`CHUNK_TOKENS` tokens, the same work keeps its temporaries in cache, and the compute
workspace the ledger charges is one chunk's (`engine.model.workspace`), not the batch's.

Decode steps (one token per row) are one chunk unless a batch has more rows than
`CHUNK_TOKENS`.
"""

from __future__ import annotations

import torch

from engine.config import ModelConfig
from engine.model import math
from engine.model.layers import LayerSpec
from engine.model.step import StepInputs

# Tokens per chunk. Qwen2-0.5B's shape, bf16 on 2 AVX-512 cores (AMD EPYC, avx512_bf16): the
# gate/up matmul [M, 896] x [896, 4864] runs at 0.41 TFLOP/s at M = 2048, 0.34 at M = 8192 (its
# output no longer in cache); a 64 x 256 -> 8 generate takes 0.89x the time of an unchunked one
# in chunks of 2048 tokens, 0.90x in chunks of 4096 (alternating in one process, medians of 2).
CHUNK_TOKENS = 2048


def chunk_rows(rows: int, new_tokens: int) -> int:
    """Rows of one chunk for a batch of `rows` rows feeding `new_tokens` tokens each."""
    return min(rows, max(1, CHUNK_TOKENS // max(new_tokens, 1)))


def decoder_in_chunks(
    cfg: ModelConfig, w: math.Weights, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
    step: StepInputs, layer: LayerSpec | None = None,
) -> torch.Tensor:
    """`math.decoder` over x [B, T, C] in row chunks -> [B, T, C]; kv: k, v [B, K, S, D]."""
    B, T, _ = x.shape
    per = chunk_rows(B, T)
    if per == B:
        return math.decoder(cfg, w, x, kv, step, layer)
    out = torch.empty_like(x)
    for start in range(0, B, per):
        rows = slice(start, min(start + per, B))
        out[rows] = math.decoder(cfg, w, x[rows], (kv[0][rows], kv[1][rows]), step.select(rows),
                                 layer)
    return out
