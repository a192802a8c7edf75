"""Each stage's policy and budgets: a given `Policy` applies to every stage; `policy="auto"`
is solved by each stage for its own layers and budgets, and the stages then agree on one
block shape (GPU batches must be cut the same way on every stage).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist

from engine.config import ModelConfig
from engine.defaults import default_budgets, default_policy
from engine.model import LayerSpec
from engine.policy.hardware import HardwareProfile, load_profile, nominal_profile
from engine.policy.policy import Policy
from engine.policy.solver import solve
from engine.policy.workload import Workload


def stage_budgets(device: torch.device, offload_dir: str | Path | None,
                  memory: dict[str, str | int] | None, share: int) -> dict[str, int]:
    """Budgets of one stage: `memory` as given (per stage); a tier left out gets what is free
    divided among the `share` stages that run on this machine (the disk is not divided: each
    stage's budget is a cap on what it may write, and they share the free space lazily)."""
    budgets = default_budgets(device, offload_dir, memory)
    given = set(memory or {})
    for tier in ("device", "host"):
        if tier not in given and not (tier == "device" and device.type == "cuda"):
            budgets[tier] //= share
    return budgets


def stage_policy(cfg: ModelConfig, owned: list[LayerSpec], policy: Policy | str | None,
                 dtype: torch.dtype, budgets: dict[str, int], device: torch.device,
                 offload_dir: str | Path | None, allow_compression: bool,
                 control_group: object = None, workload: Workload | None = None) -> Policy:
    """The stage's policy. With "auto" (or None) every stage solves for its own layers (for
    `workload`, else the engine's nominal one), then all take the smallest GPU batch and the
    fewest GPU batches any stage chose: a smaller block needs no more memory on any tier, so
    each stage's placement still fits. `fill_pipeline` then cuts the block into enough GPU
    batches for every stage to have one."""
    if isinstance(policy, Policy):
        return policy
    if policy is not None and policy != "auto":
        raise TypeError(f"policy must be None, 'auto' or a Policy, got {policy!r}")
    if workload is None:
        mine = default_policy(cfg, owned, dtype, budgets, device, offload_dir, allow_compression)
    else:
        mine = solve(cfg, owned, workload, budgets, _profile(device, offload_dir), dtype,
                     allow_compression).policy
    stages = dist.get_world_size(control_group)
    shapes: list = [None] * stages
    dist.all_gather_object(shapes, (mine.gpu_batch_size, mine.num_gpu_batches),
                           group=control_group)
    size, count = fill_pipeline(min(size for size, _ in shapes),
                                min(count for _, count in shapes), stages)
    return dataclasses.replace(mine, gpu_batch_size=size, num_gpu_batches=count)


def fill_pipeline(gpu_batch_size: int, num_gpu_batches: int, stages: int) -> tuple[int, int]:
    """A block of fewer GPU batches than stages leaves stages idle (stage r + 1 works on the
    group stage r finished): cut its GPU batches smaller, into at least `stages` of them,
    keeping the block's rows (or fewer: never more memory)."""
    if num_gpu_batches >= stages or gpu_batch_size == 1:
        return gpu_batch_size, num_gpu_batches
    factor = min(-(-stages // num_gpu_batches), gpu_batch_size)
    return gpu_batch_size // factor, num_gpu_batches * factor


def _profile(device: torch.device, offload_dir: str | Path | None) -> HardwareProfile:
    try:
        return load_profile(device, offload_dir)
    except OSError:  # nowhere to measure the disk: plan with typical rates
        return nominal_profile(device.type)
