"""Layer math in plain torch, written to match HF transformers' numerics in fp32.

Shapes: B batch rows, T new tokens, S attended columns, H heads, K kv heads, D head dim,
C hidden size, E embedding width (OPT's word_embed_proj_dim), V vocabulary, R ring slots.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.model import kernels
from engine.model.layers import LayerSpec
from engine.model.step import StepInputs

Weights = dict[str, torch.Tensor]
# In place where torch allows it: the input is always a fresh projection output, and a second
# buffer of [B, T, intermediate] costs page faults on every call (large blocks bypass the heap).
_ACTIVATIONS = {
    "relu": F.relu_,
    "silu": partial(F.silu, inplace=True),
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),  # Gemma's GeGLU
}


def linear(w: Weights, name: str, x: torch.Tensor, activation: str | None = None
           ) -> torch.Tensor:
    """x [..., K] -> [..., N] by layer `name`, then `activation` (a `_ACTIVATIONS` name)."""
    weight, bias = w[f"{name}.weight"], w.get(f"{name}.bias")
    if kernels.is_packed(weight):
        fused = activation in kernels.FUSED_ACTIVATIONS
        out = kernels.packed_linear(x, weight, bias, activation if fused else None)
        return out if fused or activation is None else _ACTIVATIONS[activation](out)
    out = F.linear(x, weight, bias)
    return out if activation is None else _ACTIVATIONS[activation](out)


def linear_add(w: Weights, name: str, x: torch.Tensor, other: torch.Tensor | None
               ) -> torch.Tensor:
    """linear(x) + other (a residual; None: nothing added), fused when the weight is packed."""
    if other is None:
        return linear(w, name, x)
    return _linear_then(w, name, x, "add", other)


def linear_mul(w: Weights, name: str, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """linear(x) * other (the gated MLP's up projection times the activated gate)."""
    return _linear_then(w, name, x, "mul", other)


def _linear_then(w: Weights, name: str, x: torch.Tensor, op: str, other: torch.Tensor
                 ) -> torch.Tensor:
    """linear(x) `op` other, op "add" | "mul": in the packed matmul's epilogue, or in place on
    the fresh output (a + x == x + a, a * x == x * a)."""
    weight, bias = w[f"{name}.weight"], w.get(f"{name}.bias")
    if kernels.is_packed(weight):
        return kernels.packed_linear_binary(x, weight, bias, op, other)
    out = F.linear(x, weight, bias)
    return out.add_(other) if op == "add" else out.mul_(other)


def norm(cfg: ModelConfig, w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    weight = w[f"{name}.weight"]
    if cfg.family == "opt":
        return F.layer_norm(x, (x.shape[-1],), weight, w.get(f"{name}.bias"), cfg.norm_eps)
    x32 = x.float()  # RMSNorm in fp32, as HF does (a copy, unless x is fp32 already)
    scale = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)
    x32 = x32 * scale if x32 is x else x32.mul_(scale)  # never in place on the caller's x
    if cfg.gemma_norm:  # Gemma scales in fp32 by (1 + w), then casts
        return (x32 * (1.0 + weight.float())).to(x.dtype)
    return x32.to(x.dtype).mul_(weight)  # weight * x, in place on the fresh result


def rotary(cfg: ModelConfig, positions: torch.Tensor, dtype: torch.dtype,
           local: bool = False) -> tuple[torch.Tensor, ...]:
    """positions [B, T] -> cos, sin [B, 1, T, rotary_dim].

    LongRoPE, as transformers applies it: a step uses the long factors for a row when that
    row's last new position reaches past `rope_original_max`, else the short ones (so keys
    cached before a row crossed keep the short rotation)."""
    if local and cfg.local_rope_inv_freq:
        freq, scale = cfg.local_rope_inv_freq, cfg.local_rope_scaling_factor
    else:
        freq, scale = cfg.rope_inv_freq, cfg.rope_scaling_factor
    inv_freq = torch.tensor(freq, dtype=torch.float32, device=positions.device)
    if cfg.rope_long_inv_freq:
        long_freq = torch.tensor(cfg.rope_long_inv_freq, dtype=torch.float32,
                                 device=positions.device)
        is_long = positions.amax(dim=-1, keepdim=True) + 1 > cfg.rope_original_max  # [B, 1]
        inv_freq = torch.where(is_long, long_freq, inv_freq)[:, None, :]  # [B, 1, D/2]
    freqs = positions[..., None].float() * inv_freq  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
    cos = (emb.cos() * scale).to(dtype)[:, None]
    sin = (emb.sin() * scale).to(dtype)[:, None]
    return cos, sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; only the first rotary_dim dims rotate (Phi-3's partial rotary)."""
    dim = cos.shape[-1]
    if dim == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rot, rest = x[..., :dim], x[..., dim:]
    return torch.cat((rot * cos + _rotate_half(rot) * sin, rest), dim=-1)


def embed(cfg: ModelConfig, w: Weights, ids: torch.Tensor, step: StepInputs) -> torch.Tensor:
    """ids [B, T] -> hidden [B, T, C]."""
    x = F.embedding(ids, w["tokens"])  # [B, T, E]
    if cfg.family == "llama":
        if cfg.embed_scale is not None:  # Gemma: the scale rounded to the model dtype, as HF
            x = x * torch.tensor(cfg.embed_scale, dtype=x.dtype, device=x.device)
        return x
    if cfg.has_projection:
        x = linear(w, "project_in", x)  # [B, T, C]
    return x + F.embedding(step.positions + 2, w["positions"])


def _qkv(cfg: ModelConfig, w: Weights, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x [B, T, C] -> q [B, H, T, D], k and v [B, K, T, D] (before rotary)."""
    B, T, _ = x.shape
    q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    if cfg.fused_qkv:  # one GEMM, then views into its output (as HF's Phi-3)
        qkv = linear(w, "qkv_proj", x)
        q, k, v = qkv[..., :q_dim], qkv[..., q_dim : q_dim + kv_dim], qkv[..., q_dim + kv_dim :]
    else:
        q, k, v = linear(w, "q_proj", x), linear(w, "k_proj", x), linear(w, "v_proj", x)
    q = q.view(B, T, cfg.num_heads, cfg.head_dim)
    k = k.view(B, T, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:  # per head, over D, before rotary (Qwen3, Gemma 3)
        q, k = norm(cfg, w, "q_norm", q), norm(cfg, w, "k_norm", k)
    v = v.view(B, T, cfg.num_kv_heads, cfg.head_dim)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _attend(cfg: ModelConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor) -> torch.Tensor:
    """q [B, H, T, D], k and v [B, K, S, D], mask [B, 1, T, S] -> [B, H, T, D]."""
    B, H, T, D = q.shape
    K = k.shape[1]
    if (cfg.attn_softcap is None and T == 1 and K != H and q.dtype != torch.float32
            and q.device.type == "cpu"):
        # decode, GQA: a kv group's H/K query heads as the query rows of one head, which
        # SDPA's CPU kernel runs ~25% faster than its enable_gqa (fp32 keeps HF's exact path)
        grouped = q.reshape(B, K, H // K, D)
        out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=cfg.attn_scale)
        return out.view(B, H, 1, D)
    if cfg.attn_softcap is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=cfg.attn_scale,
            enable_gqa=cfg.num_kv_heads != cfg.num_heads,
        )
    # Soft-capped scores (Gemma 2) are not something SDPA computes: HF's eager order, with
    # the heads of a kv group stacked as rows of one matmul instead of repeating k and v.
    S = k.shape[2]
    scale = cfg.attn_scale if cfg.attn_scale is not None else D**-0.5
    grouped = q.reshape(B, K, (H // K) * T, D)
    scores = torch.matmul(grouped, k.transpose(2, 3)).view(B, H, T, S).mul_(scale)
    cap = cfg.attn_softcap
    scores = scores.div_(cap).tanh_().mul_(cap)
    scores = scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs.view(B, K, (H // K) * T, S), v).view(B, H, T, D)


def attention(
    cfg: ModelConfig, w: Weights, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
    step: StepInputs, layer: LayerSpec | None = None, residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [B, T, C]; kv: cache k, v [B, K, S_cap, D], written at columns start..start+T, or for
    a sliding-window layer a ring [B, K, R, D] (see engine.model.step). `residual` [B, T, C],
    if given, is added to the output."""
    B, T, _ = x.shape
    q, k, v = _qkv(cfg, w, x)
    if cfg.family == "llama":
        local = layer is not None and layer.local_rope
        cos, sin = step.shared(("rotary", q.dtype, local),  # once a step, not once a layer
                               lambda: rotary(cfg, step.positions, q.dtype, local=local))
        q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
    cache_k, cache_v = kv
    home = cache_k.device  # the host, when attention runs where a host-resident cache lives
    q, k, v = q.to(home), k.to(home), v.to(home)
    windowed = layer is not None and layer.window is not None and step.ring is not None
    if windowed and cache_k.shape[2] == step.ring.size:
        out = _ring_attention(cfg, q, k, v, cache_k, cache_v, step)
    else:  # one column per position; a window, if any, in the mask
        end = step.start + T
        cache_k[:, :, step.start : end] = k
        cache_v[:, :, step.start : end] = v
        mask = step.window_mask if windowed else step.mask
        out = _attend(cfg, q, cache_k[:, :, :end], cache_v[:, :, :end], mask.to(home))
    return linear_add(w, "o_proj", out.to(x.device).transpose(1, 2).reshape(B, T, -1), residual)


def _ring_attention(cfg: ModelConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    cache_k: torch.Tensor, cache_v: torch.Tensor, step: StepInputs) -> torch.Tensor:
    ring, home = step.ring, cache_k.device
    rows, tokens, slots = ring.rows.to(home), ring.tokens.to(home), ring.slots.to(home)
    mask = ring.mask.to(home)
    if ring.write_first:  # decode: the new key overwrites one that no query needs any more
        cache_k[rows, :, slots] = k[rows, :, tokens]
        cache_v[rows, :, slots] = v[rows, :, tokens]
        return _attend(cfg, q, cache_k, cache_v, mask)
    keys, values = k, v
    if ring.read_ring:  # a shared prefix (or earlier tokens) already in the ring
        keys, values = torch.cat((cache_k, k), dim=2), torch.cat((cache_v, v), dim=2)
    out = _attend(cfg, q, keys, values, mask)
    cache_k[rows, :, slots] = k[rows, :, tokens]
    cache_v[rows, :, slots] = v[rows, :, tokens]
    return out


def mlp(cfg: ModelConfig, w: Weights, x: torch.Tensor, residual: torch.Tensor | None = None
        ) -> torch.Tensor:
    """x [B, T, C] -> [B, T, C], plus `residual` [B, T, C] if given."""
    if cfg.family == "opt":
        return linear_add(w, "fc2", linear(w, "fc1", x, cfg.activation), residual)
    if cfg.fused_qkv:  # Phi-3: one GEMM for gate and up, split by views
        gate, up = linear(w, "gate_up_proj", x).chunk(2, dim=-1)
        return linear_add(w, "down_proj", up * _ACTIVATIONS[cfg.activation](gate), residual)
    gated = linear_mul(w, "up_proj", x, linear(w, "gate_proj", x, cfg.activation))
    return linear_add(w, "down_proj", gated, residual)


def decoder(
    cfg: ModelConfig, w: Weights, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
    step: StepInputs, layer: LayerSpec | None = None,
) -> torch.Tensor:
    """One decoder layer: x [B, T, C] -> [B, T, C]; pre-norm, Gemma's sandwich of norms, or
    OPT-350m's post-norm. `layer` (its spec) says how it attends; None: globally."""
    if cfg.sandwich_norm:
        h = attention(cfg, w, norm(cfg, w, "attn_norm", x), kv, step, layer)
        x = norm(cfg, w, "post_attn_norm", h).add_(x)
        return norm(cfg, w, "post_mlp_norm", mlp(cfg, w, norm(cfg, w, "mlp_norm", x))).add_(x)
    if cfg.pre_norm:  # the residual sums fused into the branches' last projections
        x = attention(cfg, w, norm(cfg, w, "attn_norm", x), kv, step, layer, residual=x)
        return mlp(cfg, w, norm(cfg, w, "mlp_norm", x), residual=x)
    x = norm(cfg, w, "attn_norm", attention(cfg, w, x, kv, step, layer).add_(x))
    return norm(cfg, w, "mlp_norm", mlp(cfg, w, x).add_(x))


def head(cfg: ModelConfig, w: Weights, x: torch.Tensor) -> torch.Tensor:
    """x [B, C] (last position of each row) -> logits [B, V] in fp32."""
    if cfg.final_norm:
        x = norm(cfg, w, "norm", x)
    if cfg.has_projection:
        x = linear(w, "project_out", x)  # [B, E]
    head_weight = w["lm_head"]
    if kernels.is_packed(head_weight):
        logits = kernels.packed_linear(x, head_weight, None)
    else:
        logits = F.linear(x, head_weight)
    if cfg.final_softcap is not None:  # in the model dtype, as HF, before the cast
        cap = cfg.final_softcap
        logits = torch.tanh(logits / cap) * cap
    return logits.float()
