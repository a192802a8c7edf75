"""A prefill in row chunks: one decoder layer over a few thousand tokens at a time.

Every op of a decoder layer works on each row alone (norms, projections, attention to the
row's own cache), so a layer over B rows equals the layer over consecutive row slices of B,
each writing its own rows of the KV cache. A whole batch's prefill makes temporaries of
[B * T, intermediate]: hundreds of MB at 64 rows x 256 tokens, each matmul output and each
element-wise pass a round trip to memory over freshly faulted pages. Cut into chunks of
`chunk_tokens` tokens, the same work keeps its temporaries in cache, and the compute
workspace the ledger charges is one chunk's (`engine.model.workspace`), not the batch's.

Decode steps (one token per row) are one chunk unless a batch has more rows than a chunk
has tokens.
"""

from __future__ import annotations

import torch

from engine.config import ModelConfig
from engine.model import math
from engine.model.layers import LayerSpec
from engine.model.step import StepInputs

# Tokens per chunk: at most CHUNK_TOKENS, halved (not below MIN_CHUNK_TOKENS) until the widest
# temporary of a chunk, its MLP intermediate [tokens, intermediate], fits CHUNK_BYTES.
# Qwen2-0.5B's shape in bf16 (an MLP intermediate of 4,864 x 2 bytes per token):
# - Intel Xeon with AMX, 2 cores: the prefill of 128 x 256 -> 32 took 20.0-20.1 s in chunks of
#   512 tokens (5 MB), 20.3-20.5 at 256, 21.0-22.2 at 2,048 and 26.5 at 1,024 (oneDNN picks a
#   slow kernel for two of the shapes at M = 1,024); the gate/up matmul ran at 2.25 TFLOP/s
#   with M = 512 and 1.86 at M = 2,048 (a 20 MB output).
# - AMD EPYC with avx512_bf16: 2,048 tokens 0.89x and 4,096 0.90x of an unchunked prefill
#   (512 not measured there).
# The demo model (256 wide, 688 intermediate) keeps 2,048-token chunks: at 512 its columns
# took 5-10% longer (more chunks, each a hundred small ops).
CHUNK_TOKENS = 2048
MIN_CHUNK_TOKENS = 256
CHUNK_BYTES = 8 << 20


def chunk_tokens(cfg: ModelConfig, itemsize: int) -> int:
    """Tokens of one prefill chunk of this model with activations of `itemsize` bytes."""
    tokens = CHUNK_TOKENS
    while tokens > MIN_CHUNK_TOKENS and tokens * cfg.intermediate_size * itemsize > CHUNK_BYTES:
        tokens //= 2
    return tokens


def chunk_rows(rows: int, new_tokens: int, tokens: int) -> int:
    """Rows of one chunk of at most `tokens` tokens, for a batch of `rows` rows feeding
    `new_tokens` tokens each."""
    return min(rows, max(1, tokens // max(new_tokens, 1)))


def decoder_in_chunks(
    cfg: ModelConfig, w: math.Weights, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
    step: StepInputs, layer: LayerSpec | None = None,
) -> torch.Tensor:
    """`math.decoder` over x [B, T, C] in row chunks -> [B, T, C]; kv: k, v [B, K, S, D].

    With more than one chunk, x is consumed: each chunk's output is written over its own rows
    of x, which nothing reads once that chunk is computed, and x is returned. A fresh output
    of the batch's size would be faulted in page by page at every layer (59 MB per layer for
    128 rows x 256 ids of Qwen2-0.5B in bf16; the prefill took 6% longer with it)."""
    B, T, _ = x.shape
    per = chunk_rows(B, T, chunk_tokens(cfg, x.element_size()))
    if per == B:
        return math.decoder(cfg, w, x, kv, step, layer)
    for start in range(0, B, per):
        rows = slice(start, min(start + per, B))
        x[rows] = math.decoder(cfg, w, x[rows], (kv[0][rows], kv[1][rows]), step.select(rows),
                               layer)
    return x
