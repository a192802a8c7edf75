"""Bytes of the temporaries a layer's compute allocates, charged to the device tier while it
runs (q/k/v, attention scores, MLP intermediates). Shared by the engine and the cost model.

A decoder layer runs in row chunks (`engine.model.chunks`): its temporaries are one chunk's,
plus the batch's output when there is more than one chunk, plus the step's rotary tables. An
upper bound for sliding-window layers too: they attend to at most `attended` columns."""

from __future__ import annotations

from engine.config import ModelConfig
from engine.model.chunks import chunk_rows, chunk_tokens


def workspace_bytes(
    cfg: ModelConfig, kind: str, rows: int, new_tokens: int, attended: int, itemsize: int
) -> int:
    tokens = rows * new_tokens
    if kind == "embed":
        return 2 * tokens * cfg.hidden_size * itemsize
    if kind == "head":
        return 2 * rows * (cfg.vocab_size * 4 + cfg.hidden_size * itemsize)
    chunk = chunk_rows(rows, new_tokens, chunk_tokens(cfg, itemsize))
    # the copy of a disk-staged input that the chunks write over (a bound where there is none)
    staged_copy = tokens * cfg.hidden_size if chunk < rows else 0
    # the rotary cos and sin of every row, made by the first layer and kept all step
    tables = (2 if cfg.local_rope_inv_freq else 1) if cfg.family == "llama" else 0
    rotary_tables = tables * 2 * tokens * cfg.rotary_dim
    rows, tokens = chunk, chunk * new_tokens
    qkv = tokens * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    scores = rows * cfg.num_heads * new_tokens * attended
    if cfg.attn_softcap is not None:  # eager attention: the scores, and fp32 probabilities
        scores = scores + scores * 4 // itemsize
    if cfg.sliding_window is not None and new_tokens > 1:  # a ring read with the new keys
        qkv += 2 * rows * cfg.num_kv_heads * min(cfg.sliding_window, attended) * cfg.head_dim
    mlp = tokens * cfg.intermediate_size * (3 if cfg.family == "llama" else 2)
    return itemsize * (staged_copy + rotary_tables + 3 * tokens * cfg.hidden_size
                       + max(qkv + scores, mlp))
