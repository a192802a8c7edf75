"""Bytes each tier must hold for a policy: the weights' homes (exact) and the working set.

The engine checks these before it allocates anything, so a budget that cannot work fails at
construction with the numbers, not halfway through a table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import torch

from engine.compression import plan_quant
from engine.config import ModelConfig
from engine.model import LayerSpec
from engine.model.workspace import workspace_bytes
from engine.policy.policy import TIERS, Placement, Policy
from engine.storage.disk import padded_size
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


@dataclass(frozen=True)
class LayerFetch:
    """What loading one layer's weights holds until they are freed: device leases, and the
    staging buffers disk reads land in (kind, bytes), which the pool keeps per kind."""

    device: int
    staged: tuple[tuple[tuple, int], ...]


def _tensor_fetch(full: int, stored: int, shape: tuple, tier: str, shared_ram: bool
                  ) -> tuple[int, tuple[tuple, int] | None]:
    """(device lease bytes, staging (kind, bytes) or None) of one weight. `shared_ram` (a CPU):
    host homes are used in place, and a disk read's staging buffer is the lease itself; 4-bit
    codes are dequantized into a full lease wherever they live."""
    dequantized = full if stored != full else 0
    staged = (("weight", shape), stored) if tier == "disk" else None
    if tier == "device" or shared_ram:
        return dequantized, staged
    return stored + dequantized, staged


def weight_fetches(layers: list[LayerSpec], policy: Policy, itemsize: int,
                   shared_ram: bool) -> list[LayerFetch]:
    """Per layer, what its weights hold while it computes, beyond their homes."""
    fetches = []
    for layer in layers:
        sizes = _sizes(layer, itemsize)
        tiers = _layer_tiers(sizes, policy.weights)
        stored = _stored_sizes(layer, itemsize, policy.compress_weights)
        device, staged = 0, []
        for spec, full, kept, tier in zip(layer.weights, sizes, stored, tiers, strict=True):
            shape = spec.shape if kept == full else (kept,)
            lease, staging = _tensor_fetch(full, kept, shape, tier, shared_ram)
            device += lease
            staged += [staging] if staging is not None else []
        fetches.append(LayerFetch(device, tuple(staged)))
    return fetches


def weight_window_bytes(layers: list[LayerSpec], policy: Policy, itemsize: int,
                        shared_ram: bool) -> tuple[int, int]:
    """Peak bytes that loaded (non-resident) weights hold: (the device leases of one layer, two
    with overlap; the staging buffers the pool keeps for a block: per kind, as many as the
    schedule has in use at once)."""
    fetches = weight_fetches(layers, policy, itemsize, shared_ram)
    window = 2 if policy.overlap and len(fetches) > 1 else 1
    spans = [fetches[start : start + window] for start in range(len(fetches) - window + 1)]
    leases = max(sum(fetch.device for fetch in span) for span in spans)
    most: dict[tuple, int] = {}
    for span in spans:
        counts = Counter(kind for fetch in span for kind, _ in fetch.staged)
        for kind, count in counts.items():
            most[kind] = max(most.get(kind, 0), count)
    sizes = {kind: size for fetch in fetches for kind, size in fetch.staged}
    return leases, sum(padded_size(sizes[kind]) * count for kind, count in most.items())


def minimum_bytes(
    cfg: ModelConfig, layers: list[LayerSpec], policy: Policy, dtype: torch.dtype,
    shared_ram: bool,
) -> dict[str, int]:
    """What each tier needs for a single one-token row: below this nothing can run."""
    itemsize = dtype.itemsize
    needs = weight_home_bytes(layers, policy, itemsize)
    cache_row = 2 * cfg.num_kv_heads * cfg.head_dim * itemsize * 2  # [2, 1, K, 2, D]
    work = max(workspace_bytes(cfg, layer.kind, 1, 1, 2, itemsize) for layer in layers)
    leases, staging = weight_window_bytes(layers, policy, itemsize, shared_ram)
    needs["device"] += leases + work + cache_row
    needs["device" if shared_ram else "host"] += staging  # where the disk reads land
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
