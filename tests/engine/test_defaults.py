"""The defaults a caller may leave out: on a CPU the compute dtype follows what the CPU
multiplies in hardware (bf16 with oneDNN's bf16 path, fp32 on an AVX2-only CPU)."""

from __future__ import annotations

import pytest
import torch

from engine import Engine
from engine.config import ModelConfig
from engine.defaults import cpu_dtype, resolve_dtype
from engine.model import kernels

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_the_cpu_default_dtype_is_the_one_it_multiplies_in_hardware(monkeypatch, native, expected):
    monkeypatch.setattr(kernels, "cpu_multiplies_bf16", lambda: native)
    cfg = ModelConfig.__new__(ModelConfig)  # resolve_dtype reads the config only on a GPU
    assert cpu_dtype() is expected
    assert resolve_dtype(None, cfg, CPU) is expected
    assert resolve_dtype(torch.bfloat16, cfg, CPU) is torch.bfloat16  # a choice is kept
    assert resolve_dtype(torch.float32, cfg, CPU) is torch.float32
    with pytest.raises(ValueError, match="not supported on cpu"):
        resolve_dtype(torch.float16, cfg, CPU)


def test_an_engine_without_a_dtype_takes_this_cpus(model_dirs):
    with Engine.from_pretrained(model_dirs("llama"), device="cpu") as engine:
        assert engine.dtype is cpu_dtype()
        assert kernels.cpu_multiplies_bf16() == (engine.dtype is torch.bfloat16)
