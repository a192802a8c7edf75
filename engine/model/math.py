"""Layer math in plain torch, written to match HF transformers' numerics in fp32.

Shapes: B batch rows, T new tokens, S attended columns, H heads, K kv heads, D head dim,
C hidden size, E embedding width (OPT's word_embed_proj_dim), V vocabulary.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.model.step import StepInputs

Weights = dict[str, torch.Tensor]
# In place where torch allows it: the input is always a fresh projection output, and a second
# buffer of [B, T, intermediate] costs page faults on every call (large blocks bypass the heap).
_ACTIVATIONS = {
    "relu": F.relu_,
    "silu": partial(F.silu, inplace=True),
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
}


def linear(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


def norm(cfg: ModelConfig, w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    weight = w[f"{name}.weight"]
    if cfg.family == "opt":
        return F.layer_norm(x, (x.shape[-1],), weight, w.get(f"{name}.bias"), cfg.norm_eps)
    x32 = x.float()  # RMSNorm in fp32, as HF does
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)
    return weight * x32.to(x.dtype)


def rotary(cfg: ModelConfig, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """positions [B, T] -> cos, sin [B, 1, T, D]."""
    inv_freq = torch.tensor(cfg.rope_inv_freq, dtype=torch.float32, device=positions.device)
    freqs = positions[..., None].float() * inv_freq  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
    cos = (emb.cos() * cfg.rope_scaling_factor).to(dtype)[:, None]
    sin = (emb.sin() * cfg.rope_scaling_factor).to(dtype)[:, None]
    return cos, sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def embed(cfg: ModelConfig, w: Weights, ids: torch.Tensor, step: StepInputs) -> torch.Tensor:
    """ids [B, T] -> hidden [B, T, C]."""
    x = F.embedding(ids, w["tokens"])  # [B, T, E]
    if cfg.family == "llama":
        return x
    if cfg.has_projection:
        x = linear(w, "project_in", x)  # [B, T, C]
    return x + F.embedding(step.positions + 2, w["positions"])


def attention(
    cfg: ModelConfig, w: Weights, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
    step: StepInputs,
) -> torch.Tensor:
    """x [B, T, C]; kv: cache k, v [B, K, S_cap, D], written at columns start..start+T."""
    B, T, _ = x.shape
    q = linear(w, "q_proj", x).view(B, T, cfg.num_heads, cfg.head_dim).transpose(1, 2)  # [B,H,T,D]
    k = linear(w, "k_proj", x).view(B, T, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
    v = linear(w, "v_proj", x).view(B, T, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
    if cfg.family == "llama":
        cos, sin = rotary(cfg, step.positions, q.dtype)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    cache_k, cache_v = kv
    home = cache_k.device  # the host, when attention runs where a host-resident cache lives
    end = step.start + T
    cache_k[:, :, step.start : end] = k.to(home)
    cache_v[:, :, step.start : end] = v.to(home)
    out = F.scaled_dot_product_attention(
        q.to(home), cache_k[:, :, :end], cache_v[:, :, :end], attn_mask=step.mask.to(home),
        enable_gqa=cfg.num_kv_heads != cfg.num_heads,
    )  # [B, H, T, D]
    return linear(w, "o_proj", out.to(x.device).transpose(1, 2).reshape(B, T, -1))


def mlp(cfg: ModelConfig, w: Weights, x: torch.Tensor) -> torch.Tensor:
    act = _ACTIVATIONS[cfg.activation]
    if cfg.family == "opt":
        return linear(w, "fc2", act(linear(w, "fc1", x)))
    return linear(w, "down_proj", act(linear(w, "gate_proj", x)).mul_(linear(w, "up_proj", x)))


def decoder(
    cfg: ModelConfig, w: Weights, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
    step: StepInputs,
) -> torch.Tensor:
    """One decoder layer: x [B, T, C] -> [B, T, C]; pre-norm or OPT-350m's post-norm."""
    if cfg.pre_norm:  # residual sums in place on the fresh branch outputs (a + x == x + a)
        x = attention(cfg, w, norm(cfg, w, "attn_norm", x), kv, step).add_(x)
        return mlp(cfg, w, norm(cfg, w, "mlp_norm", x)).add_(x)
    x = norm(cfg, w, "attn_norm", attention(cfg, w, x, kv, step).add_(x))
    return norm(cfg, w, "mlp_norm", mlp(cfg, w, x).add_(x))


def head(cfg: ModelConfig, w: Weights, x: torch.Tensor) -> torch.Tensor:
    """x [B, C] (last position of each row) -> logits [B, V] in fp32."""
    if cfg.final_norm:
        x = norm(cfg, w, "norm", x)
    if cfg.has_projection:
        x = linear(w, "project_out", x)  # [B, E]
    return F.linear(x, w["lm_head"]).float()
