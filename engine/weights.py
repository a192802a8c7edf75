"""Placing a checkpoint's weights on the tiers, layer by layer, as the policy's percentages say.

FlexGen's rule: within each layer, walk the tensors in order and give each the tier in whose
percentage band the midpoint of its cumulative byte range falls. So `Placement(20, 30, 50)` puts
about a fifth of every layer's bytes on the device, not the first fifth of the layers.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from engine.checkpoint import CheckpointError, CheckpointReader
from engine.model import LayerSpec
from engine.policy.policy import TIERS, Placement
from engine.storage import Placed, Tiers

LayerWeights = dict[str, Placed]


def choose_tiers(sizes: list[int], placement: Placement) -> list[str]:
    """The tier of each tensor of one layer, by the midpoint of its cumulative byte range."""
    total = sum(sizes) or 1
    bounds, acc = [], 0.0
    for tier in TIERS:
        acc += getattr(placement, tier)
        bounds.append((acc, tier))
    choices, start = [], 0
    for size in sizes:
        midpoint = 100.0 * (start + size / 2) / total
        choices.append(next((tier for bound, tier in bounds if midpoint < bound), TIERS[-1]))
        start += size
    return choices


def _read_checked(reader: CheckpointReader, spec, dtype: torch.dtype) -> torch.Tensor:
    tensor = reader.read(spec.source)
    if tuple(tensor.shape) != spec.shape:
        raise CheckpointError(
            f"tensor {spec.source!r} has shape {tuple(tensor.shape)}, the config implies {spec.shape}"
        )
    return tensor.to(dtype)


def place_weights(
    reader: CheckpointReader, layers: list[LayerSpec], placement: Placement, dtype: torch.dtype,
    tiers: Tiers, compress: bool = False, progress: bool = False,
) -> list[LayerWeights]:
    """Read every weight once and home it on its tier; returns one dict per layer."""
    placed_layers: list[LayerWeights] = []
    for layer in tqdm(layers, desc="placing weights", disable=not progress, leave=False):
        sizes = [int(torch.Size(spec.shape).numel()) * dtype.itemsize for spec in layer.weights]
        placed: LayerWeights = {}
        for spec, tier in zip(layer.weights, choose_tiers(sizes, placement), strict=True):
            tensor = _read_checked(reader, spec, dtype)
            # 4-bit codes for matrices only: norms and biases are tiny and precision-sensitive
            packed = compress and len(spec.shape) == 2
            placed[spec.name] = tiers.put(tier, tensor, f"weight {spec.source}", compress=packed)
        placed_layers.append(placed)
    return placed_layers
