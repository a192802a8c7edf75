"""Bytes each tier must hold for a policy: the weights' homes (exact) and the working set.

The engine checks these before it allocates anything, so a budget that cannot work fails at
construction with the numbers, not halfway through a table.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import pairwise

import torch

from engine.compression import plan_quant
from engine.config import ModelConfig
from engine.model import LayerSpec
from engine.model.workspace import workspace_bytes
from engine.policy.policy import TIERS, Placement, Policy
from engine.storage.pool import padded_size
from engine.weights import choose_tiers


@lru_cache(maxsize=4096)
def _sizes(layer: LayerSpec, itemsize: int) -> tuple[int, ...]:
    return tuple(int(torch.Size(spec.shape).numel()) * itemsize for spec in layer.weights)


@lru_cache(maxsize=4096)
def _layer_tiers(sizes: tuple[int, ...], placement: Placement) -> tuple[str, ...]:
    """`choose_tiers`, remembered: a model's decoder layers all share one answer."""
    return tuple(choose_tiers(list(sizes), placement))


@lru_cache(maxsize=4096)
def _stored_sizes(layer: LayerSpec, itemsize: int, compress: bool) -> tuple[int, ...]:
    """Bytes each weight occupies in its home: 4-bit codes plus group scales for matrices."""
    if not compress:
        return _sizes(layer, itemsize)
    dtype = {2: torch.bfloat16, 4: torch.float32}[itemsize]
    return tuple(
        plan_quant(spec.shape, dtype).nbytes if len(spec.shape) == 2
        else int(torch.Size(spec.shape).numel()) * itemsize
        for spec in layer.weights
    )


def weight_home_bytes(layers: list[LayerSpec], policy: Policy, itemsize: int) -> dict[str, int]:
    """Bytes of weights homed on each tier."""
    homes = dict.fromkeys(TIERS, 0)
    for layer in layers:
        tiers = _layer_tiers(_sizes(layer, itemsize), policy.weights)
        for size, tier in zip(_stored_sizes(layer, itemsize, policy.compress_weights), tiers,
                              strict=True):
            homes[tier] += size
    return homes


def fetched_bytes(num_bytes: int, tier: str, shared_ram: bool) -> int:
    """Device bytes a fetch of `num_bytes` homed on `tier` charges. `shared_ram` (a CPU): host
    homes are used in place (0) and disk reads land in page-aligned staging buffers."""
    if tier == "device" or (shared_ram and tier == "host"):
        return 0
    return padded_size(num_bytes) if shared_ram and tier == "disk" else num_bytes


def _working_bytes(full: int, stored: int, tier: str, shared_ram: bool) -> int:
    """Device bytes one weight takes while its layer computes, beyond its home: what is
    fetched, plus the full tensor when 4-bit codes are dequantized."""
    return fetched_bytes(stored, tier, shared_ram) + (full if stored != full else 0)


def weight_load_bytes(layers: list[LayerSpec], policy: Policy, itemsize: int,
                      shared_ram: bool) -> list[int]:
    """Per layer, the device bytes its weights take while it computes, beyond their homes."""
    loads = []
    for layer in layers:
        sizes = _sizes(layer, itemsize)
        tiers = _layer_tiers(sizes, policy.weights)
        stored = _stored_sizes(layer, itemsize, policy.compress_weights)
        loads.append(sum(_working_bytes(full, kept, tier, shared_ram)
                         for full, kept, tier in zip(sizes, stored, tiers, strict=True)))
    return loads


def weight_window_bytes(layers: list[LayerSpec], policy: Policy, itemsize: int,
                        shared_ram: bool) -> int:
    """Peak device bytes of loaded (non-resident) weights: one layer, or two with overlap."""
    loads = weight_load_bytes(layers, policy, itemsize, shared_ram)
    if not policy.overlap or len(loads) < 2:
        return max(loads)
    return max(a + b for a, b in pairwise(loads))


def minimum_bytes(
    cfg: ModelConfig, layers: list[LayerSpec], policy: Policy, dtype: torch.dtype,
    shared_ram: bool,
) -> dict[str, int]:
    """What each tier needs for a single one-token row: below this nothing can run."""
    itemsize = dtype.itemsize
    needs = weight_home_bytes(layers, policy, itemsize)
    cache_row = 2 * cfg.num_kv_heads * cfg.head_dim * itemsize * 2  # [2, 1, K, 2, D]
    work = max(workspace_bytes(cfg, layer.kind, 1, 1, 2, itemsize) for layer in layers)
    needs["device"] += weight_window_bytes(layers, policy, itemsize, shared_ram) + work + cache_row
    return needs


def cache_entry_bytes(cfg: ModelConfig, rows: int, capacity: int, itemsize: int) -> int:
    """One layer's KV cache for one GPU batch: [2, B, K, S_cap, D]."""
    return 2 * rows * cfg.num_kv_heads * capacity * cfg.head_dim * itemsize


def quantized_bytes(cfg: ModelConfig, rows: int, capacity: int, itemsize: int) -> int:
    """A KV cache entry held as 4-bit group-wise codes (groups along the head dim)."""
    dtype = {2: torch.bfloat16, 4: torch.float32}[itemsize]
    shape = (2, rows, cfg.num_kv_heads, capacity, cfg.head_dim)
    return plan_quant(shape, dtype).nbytes


def hidden_bytes(cfg: ModelConfig, rows: int, tokens: int, itemsize: int) -> int:
    """A hidden state between layers: [B, T, C]."""
    return rows * tokens * cfg.hidden_size * itemsize


def entry_tiers(num_layers: int, num_batches: int, placement: Placement) -> list[list[str]]:
    """[layer][batch] -> tier of a cache or hidden-state home, as the runner chooses them
    (one choice per (layer, batch) entry, layer-major, so the percentages hold over a block)."""
    flat = _layer_tiers((1,) * (num_layers * num_batches), placement)
    return [flat[layer * num_batches : (layer + 1) * num_batches] for layer in range(num_layers)]
