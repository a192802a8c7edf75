"""The CPU bf16 fast path: oneDNN-packed weights with fused epilogues (engine.model.kernels),
and the grouped decode attention, agree with the plain ops within bf16 rounding; fp32 and
embeddings never take it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import Engine, Placement, Policy
from engine.config import ModelConfig
from engine.model import kernels, math
from engine.storage import Placed

BF16 = torch.bfloat16
CPU = torch.device("cpu")
needs_packing = pytest.mark.skipif(not kernels.packing_supported(CPU, BF16),
                                   reason="no oneDNN bf16 matmul on this CPU")


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Within bf16 rounding: one rounding of the fused epilogue vs one per plain op."""
    scale = expected.float().abs().max().item()
    assert (actual.float() - expected.float()).abs().max().item() <= 2e-2 * scale


def _home(tensor: torch.Tensor, tier: str = "device") -> Placed:
    return Placed(tier, tuple(tensor.shape), tensor.dtype, tensor=tensor)


@needs_packing
def test_packed_linear_and_its_epilogues_match_the_plain_ops():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 32, generator=gen).to(BF16)
    weight = (torch.randn(48, 32, generator=gen) * 0.2).to(BF16)
    bias = torch.randn(48, generator=gen).to(BF16)
    other = torch.randn(3, 5, 48, generator=gen).to(BF16)
    homes = {"up.weight": _home(weight.clone())}
    kernels.pack_homes(homes)
    packed = homes["up.weight"].tensor
    assert kernels.is_packed(packed) and tuple(packed.shape) == (48, 32)
    plain = F.linear(x, weight, bias)
    _close(kernels.packed_linear(x, packed, bias), plain)
    _close(kernels.packed_linear(x, packed, bias, "silu"), F.silu(plain))
    _close(kernels.packed_linear(x, packed, bias, "relu"), F.relu(plain))
    _close(kernels.packed_linear_binary(x, packed, bias, "add", other), plain + other)
    _close(kernels.packed_linear_binary(x, packed, bias, "mul", other), plain * other)
    _close(kernels.packed_linear(x[:, -1], packed, None), F.linear(x[:, -1], weight))


def test_only_plain_bf16_matmul_weights_are_packed():
    homes = {
        "q_proj.weight": _home(torch.zeros(8, 4, dtype=BF16)),
        "q_proj.bias": _home(torch.zeros(8, dtype=BF16)),
        "attn_norm.weight": _home(torch.ones(4, dtype=BF16)),
        "tokens": _home(torch.zeros(16, 4, dtype=BF16)),
        "o_proj.weight": _home(torch.zeros(4, 8)),  # fp32
    }
    plain = {name: placed.tensor for name, placed in homes.items()}
    if kernels.packing_supported(CPU, BF16):
        kernels.pack_homes(homes)
        assert homes["q_proj.weight"].tensor.is_mkldnn
        assert homes["q_proj.weight"].nbytes == 8 * 4 * 2  # the same charge
    for name in ("q_proj.bias", "attn_norm.weight", "tokens", "o_proj.weight"):
        assert homes[name].tensor is plain[name]
    assert not kernels.packing_supported(CPU, torch.float32)
    assert not kernels.packing_supported(torch.device("meta"), BF16)


def test_grouped_decode_attention_matches_sdpa_with_gqa(model_dirs):
    cfg = ModelConfig.from_pretrained(model_dirs("qwen2"))
    assert cfg.num_kv_heads < cfg.num_heads
    gen = torch.Generator().manual_seed(1)
    rows, cols, dim = 3, 9, cfg.head_dim
    q = torch.randn(rows, cfg.num_heads, 1, dim, generator=gen).to(BF16)
    k, v = (torch.randn(rows, cfg.num_kv_heads, cols, dim, generator=gen).to(BF16)
            for _ in range(2))
    mask = torch.rand(rows, 1, 1, cols, generator=gen) > 0.3
    mask[..., -1] = True
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=cfg.attn_scale,
                                              enable_gqa=True)
    _close(math._attend(cfg, q, k, v, mask), expected)


@needs_packing
def test_a_bf16_engine_in_ram_packs_its_weights_and_scores_as_the_plain_one(model_dirs,
                                                                         monkeypatch):
    """Log-probabilities of the packed engine within bf16 noise of the unpacked one."""
    everywhere = Placement.on("device")
    policy = Policy(4, 1, everywhere, everywhere, everywhere)
    prompts, candidates = [[5, 6, 7, 8], [9, 10]], [[11], [12, 13]]
    with Engine.from_pretrained(model_dirs("qwen2"), policy=policy, dtype=BF16) as packed:
        fast = packed.score(prompts, candidates)
        decoder = packed._weights[1]
        assert decoder["q_proj.weight"].tensor.is_mkldnn
        assert not decoder["attn_norm.weight"].tensor.is_mkldnn
    monkeypatch.setattr(kernels, "packing_supported", lambda device, dtype: False)
    with Engine.from_pretrained(model_dirs("qwen2"), policy=policy, dtype=BF16) as plain:
        slow = plain.score(prompts, candidates)
        assert not plain._weights[1]["q_proj.weight"].tensor.is_mkldnn
    assert torch.allclose(torch.tensor(fast), torch.tensor(slow), atol=0.15)
