"""One token of the block schedule as a flat list of typed steps.

FlexGen's loop order: for each layer, for each GPU batch, compute; each layer's weights are
loaded once and shared by all GPU batches of the block. With overlap, the loads for the next
(layer, batch) pair, and the next layer's weights, are issued before the current compute, so
copies run while the device computes. The list is plain data: it is tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadWeights:
    layer: int


@dataclass(frozen=True)
class FreeWeights:
    layer: int


@dataclass(frozen=True)
class LoadCache:
    layer: int
    batch: int


@dataclass(frozen=True)
class StoreCache:
    layer: int
    batch: int


@dataclass(frozen=True)
class LoadHidden:
    """The input of `layer` for `batch`: the hidden state that layer - 1 stored."""

    layer: int
    batch: int


@dataclass(frozen=True)
class StoreHidden:
    layer: int
    batch: int


@dataclass(frozen=True)
class Compute:
    layer: int
    batch: int


Step = LoadWeights | FreeWeights | LoadCache | StoreCache | LoadHidden | StoreHidden | Compute


def _loads(layer: int, batch: int, has_cache: list[bool]) -> list[Step]:
    steps: list[Step] = [LoadCache(layer, batch)] if has_cache[layer] else []
    if layer > 0:  # layer 0 (the embedding) reads token ids, not a hidden state
        steps.append(LoadHidden(layer, batch))
    return steps


def _stores(layer: int, batch: int, has_cache: list[bool]) -> list[Step]:
    steps: list[Step] = [StoreCache(layer, batch)] if has_cache[layer] else []
    if layer < len(has_cache) - 1:  # the last layer's output is logits, consumed at once
        steps.append(StoreHidden(layer, batch))
    return steps


def token_steps(has_cache: list[bool], num_batches: int, overlap: bool) -> list[Step]:
    """Steps for one token over all layers; `has_cache[layer]` says whether it keeps a KV cache."""
    pairs = [(layer, batch) for layer in range(len(has_cache)) for batch in range(num_batches)]
    if not overlap:
        steps: list[Step] = []
        for layer, batch in pairs:
            if batch == 0:
                steps.append(LoadWeights(layer))
            steps += [*_loads(layer, batch, has_cache), Compute(layer, batch)]
            steps += _stores(layer, batch, has_cache)
            if batch == num_batches - 1:
                steps.append(FreeWeights(layer))
        return steps
    steps = [LoadWeights(0), *_loads(0, 0, has_cache)]
    for pair_idx, (layer, batch) in enumerate(pairs):
        if batch == 0 and layer + 1 < len(has_cache):
            steps.append(LoadWeights(layer + 1))
        if pair_idx + 1 < len(pairs):
            steps += _loads(*pairs[pair_idx + 1], has_cache)
        steps += [Compute(layer, batch), *_stores(layer, batch, has_cache)]
        if batch == num_batches - 1:
            steps.append(FreeWeights(layer))
    return steps
