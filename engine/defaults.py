"""Defaults the caller may leave out: device, dtype, memory budgets, and a fallback policy."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.memory_limit import available_memory
from engine.model import LayerSpec, kernels
from engine.policy.hardware import load_profile, nominal_profile
from engine.policy.policy import TIERS, Policy
from engine.policy.solver import solve
from engine.policy.workload import Workload
from engine.storage import parse_bytes

logger = logging.getLogger(__name__)

HEADROOM = 0.8  # leave a fifth of what is free for the rest of the process and the OS


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_dtype() -> torch.dtype:
    """The default compute dtype on this CPU: bf16 where the CPU multiplies it in hardware
    (half the bytes, AMX's fast path), else fp32."""
    return torch.bfloat16 if kernels.cpu_multiplies_bf16() else torch.float32


def resolve_dtype(dtype: torch.dtype | None, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """The checkpoint's dtype on a GPU; on a CPU the one it multiplies fastest (`cpu_dtype`)."""
    if dtype is None:
        if device.type == "cpu":
            return cpu_dtype()
        return cfg.torch_dtype if cfg.torch_dtype in (torch.float16, torch.bfloat16) else torch.float16
    allowed = (torch.float32, torch.bfloat16) if device.type == "cpu" else (
        torch.float32, torch.bfloat16, torch.float16)
    if dtype not in allowed:
        raise ValueError(f"dtype {dtype} is not supported on {device.type}; use one of {allowed}")
    return dtype


def default_budgets(
    device: torch.device, offload_dir: str | Path | None, memory: dict[str, str | int] | None
) -> dict[str, int]:
    """Budgets per tier: what the caller gave, else what is free with headroom: the available
    RAM capped by the process's memory cgroup (`engine.memory_limit`). On a CPU the device tier
    is a pool inside RAM, so device and host share it."""
    memory = dict(memory or {})
    unknown = set(memory) - set(TIERS)
    if unknown:
        raise ValueError(f"unknown memory tier(s) {sorted(unknown)}; tiers are {TIERS}")
    free_ram = available_memory() * HEADROOM
    if device.type == "cuda":
        free_device = torch.cuda.mem_get_info(device)[0] * HEADROOM
        free_host = free_ram
    else:
        free_device = free_host = free_ram / 2
    disk_root = Path(offload_dir) if offload_dir is not None else Path(tempfile.gettempdir())
    while not disk_root.exists():
        disk_root = disk_root.parent
    defaults = {"device": free_device, "host": free_host,
                "disk": shutil.disk_usage(disk_root).free * HEADROOM}
    return {tier: parse_bytes(memory.get(tier, int(defaults[tier]))) for tier in TIERS}


def nominal_workload(cfg: ModelConfig) -> Workload:
    """What the engine plans for before it sees a table: FlexGen's benchmark shape (512-token
    prompts, 32 new tokens), shortened to fit the model's positions."""
    gen_len = max(1, min(32, cfg.max_positions // 4))
    return Workload(rows=256, prompt_len=max(1, min(512, cfg.max_positions // 2)), gen_len=gen_len)


def default_policy(
    cfg: ModelConfig, layers: list[LayerSpec], dtype: torch.dtype, budgets: dict[str, int],
    device: torch.device | None = None, offload_dir: str | Path | None = None,
    allow_compression: bool = False, workload: Workload | None = None,
) -> Policy:
    """The LP solver's policy for `workload` (default: a nominal one) on this machine's
    measured profile.
    Raises MemoryBudgetError (with the minimum and the tier) when not even one row fits."""
    device = resolve_device(device)
    try:
        profile = load_profile(device, offload_dir)
    except OSError as err:  # nowhere to measure the disk: plan with typical rates
        logger.warning("cannot measure this machine (%s); planning with typical rates", err)
        profile = nominal_profile(device.type)
    return solve(cfg, layers, workload or nominal_workload(cfg), budgets, profile, dtype,
                 allow_compression).policy
