"""4-bit group-wise compression: bounded error, exact plumbing through the engine."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import Engine, Placement, Policy, SamplingParams
from engine.compression import dequantize, quantize
from tests.models import hf_greedy


@pytest.mark.parametrize("shape", [(64, 128), (3, 5, 70), (130,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_error_within_half_a_step(shape, dtype):
    x = torch.randn(shape, dtype=dtype)
    flat, meta = quantize(x, group_size=64, dim=-1)
    y = dequantize(flat, meta)
    assert y.shape == x.shape and y.dtype == dtype
    assert flat.dtype == torch.uint8 and flat.numel() == meta.nbytes < x.numel() * x.element_size()
    step = (x.float().amax() - x.float().amin()) / 15
    assert (y.float() - x.float()).abs().max() <= step / 2 + 0.02


def test_constant_groups_survive():
    x = torch.full((4, 64), 3.0)
    assert torch.equal(dequantize(*quantize(x)), x)


def test_compressed_weights_equal_hf_on_roundtripped_checkpoint(model_dirs, tmp_path):
    """The engine with 4-bit weights computes exactly what HF computes on a checkpoint whose
    matrices were quantized and dequantized beforehand: compression is plumbed, not guessed."""
    source = model_dirs("llama")
    state = load_file(source / "model.safetensors")
    rounded = {name: dequantize(*quantize(w)) if w.dim() == 2 else w for name, w in state.items()}
    target = tmp_path / "rounded"
    target.mkdir()
    (target / "config.json").write_text((source / "config.json").read_text())
    save_file(rounded, target / "model.safetensors", metadata={"format": "pt"})
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10, 11], [12]]
    expected = [hf_greedy(target, p, 6) for p in prompts]
    policy = Policy(2, 2, Placement(30, 30, 40), Placement.on("host"), Placement.on("device"),
                    compress_weights=True)
    with Engine.from_pretrained(source, policy=policy, dtype=torch.float32) as eng:
        assert eng.generate(prompts, SamplingParams(max_new_tokens=6)) == expected


def test_compressed_cache_runs_and_shrinks_the_cache(model_dirs):
    prompts = [list(range(3, 40))] * 4
    sizes = {}
    for compress in (False, True):
        policy = Policy(4, 1, Placement.on("device"), Placement.on("host"), Placement.on("device"),
                        compress_cache=compress)
        with Engine.from_pretrained(model_dirs("opt"), policy=policy, dtype=torch.float32) as eng:
            outs = eng.generate(prompts, SamplingParams(max_new_tokens=8, ignore_eos=True))
            sizes[compress] = eng.stats.peak_bytes["host"]
        assert all(len(out) == 8 for out in outs)
    assert sizes[True] < sizes[False] / 2
