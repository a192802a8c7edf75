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
from engine.policy.policy import Policy


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
                 control_group: object = None) -> Policy:
    """The stage's policy. With "auto" (or None) every stage solves for its own layers, then
    all take the smallest GPU batch and the fewest GPU batches any stage chose: a smaller
    block needs no more memory on any tier, so each stage's placement still fits."""
    if isinstance(policy, Policy):
        return policy
    if policy is not None and policy != "auto":
        raise TypeError(f"policy must be None, 'auto' or a Policy, got {policy!r}")
    mine = default_policy(cfg, owned, dtype, budgets, device, offload_dir, allow_compression)
    shapes: list = [None] * dist.get_world_size(control_group)
    dist.all_gather_object(shapes, (mine.gpu_batch_size, mine.num_gpu_batches),
                           group=control_group)
    gpu_batch_size = min(size for size, _ in shapes)
    num_gpu_batches = min(count for _, count in shapes)
    return dataclasses.replace(mine, gpu_batch_size=gpu_batch_size,
                               num_gpu_batches=num_gpu_batches)
