"""`plan(model, workload, memory)`: the entry point that reads a model and the machine."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.model import layer_specs
from engine.policy.hardware import HardwareProfile, load_profile
from engine.policy.solver import Plan, solve
from engine.policy.workload import Workload


def plan(
    model: str | Path | ModelConfig, workload: Workload,
    memory: dict[str, str | int] | None = None, *, device: str | torch.device | None = None,
    dtype: torch.dtype | None = None, offload_dir: str | Path | None = None,
    profile: HardwareProfile | None = None, allow_compression: bool = False,
) -> Plan:
    """The fastest policy for `workload` on this machine. `model`: a checkpoint directory or a
    `ModelConfig` (no weights are read). `memory`: budgets per tier like `Engine`'s; tiers left
    out get what is free, with headroom. `profile`: the measured (cached) one by default.
    `allow_compression`: 4-bit weights / KV cache may be chosen (they change outputs)."""
    from engine.defaults import default_budgets, resolve_device, resolve_dtype  # no import cycle

    cfg = model if isinstance(model, ModelConfig) else ModelConfig.from_pretrained(model)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, cfg, device)
    budgets = default_budgets(device, offload_dir, memory)
    profile = profile or load_profile(device, offload_dir)
    return solve(cfg, layer_specs(cfg), workload, budgets, profile, dtype, allow_compression)
