"""Predictions for one concrete policy on a workload: time per block and for the table, and the
peak bytes on each tier (what `engine.stats.peak_bytes` will show)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.compression import quant_ratio
from engine.config import ModelConfig
from engine.model import LayerSpec
from engine.policy.cost import Batch, Compression, kinds_of, token_costs, token_seconds
from engine.policy.hardware import HardwareProfile
from engine.policy.memory import cache_entry_bytes, entry_tiers, hidden_bytes, weight_home_bytes
from engine.policy.peaks import BlockShape, block_peaks
from engine.policy.policy import TIERS, Policy
from engine.policy.workload import Workload
from engine.weights import choose_tiers

# stores trailing by three computes: the bound plans are checked against (two was exceeded in
# about one run of eight by the tests' tiny models, whose I/O threads lag the most)
PLANNING_LAG = 3


@dataclass(frozen=True)
class Prediction:
    prefill_s: float  # the prefill token of one full block
    decode_s: float  # the gen_len - 1 decode tokens of one full block
    total_s: float  # the whole table: every block and the shared prefix
    tokens_per_s: float  # generated tokens / total_s
    peak_bytes: dict[str, int]  # expected peaks per tier
    peak_bound: dict[str, int]  # a bound on them when I/O runs late and caches are re-made
    # (what plans must fit)


def table_blocks(lengths: np.ndarray, gpu_batch_size: int, num_gpu_batches: int
                 ) -> list[tuple[int, list[Batch]]]:
    """(number of blocks, their GPU batches): full blocks with the mean batch width, then the
    last, partial block as it is. `lengths` sorted longest first, as the engine orders rows."""
    block = gpu_batch_size * num_gpu_batches
    full, rest = divmod(len(lengths), block)
    groups: list[tuple[int, list[Batch]]] = []
    if full:
        widths = lengths[: full * block : gpu_batch_size]  # each batch's first (longest) row
        width = int(np.ceil(widths.mean()))
        groups.append((full, [Batch(gpu_batch_size, width)] * num_gpu_batches))
    if rest:
        tail = lengths[full * block :]
        batches = [Batch(len(tail[at : at + gpu_batch_size]), int(tail[at]))
                   for at in range(0, rest, gpu_batch_size)]
        groups.append((1, batches))
    return groups


def policy_fractions(layers: list[LayerSpec], policy: Policy, itemsize: int
                     ) -> dict[str, dict[str, float]]:
    """Per layer kind, the share of each (tensor kind, tier) that the engine will really place:
    weights by bytes, caches and hidden states by (layer, batch) entries."""
    caches = entry_tiers(len(layers), policy.num_gpu_batches, policy.cache)
    hiddens = entry_tiers(len(layers), policy.num_gpu_batches, policy.activations)
    decoder_caches = [tier for layer, row in zip(layers, caches, strict=True)
                      if layer.kind == "decoder" for tier in row]
    hidden_homes = [tier for row in hiddens[:-1] for tier in row]  # the head stores none
    shared = {**_shares("cache", decoder_caches), **_shares("activations", hidden_homes)}
    fractions = {}
    for kind in kinds_of(layers):
        layer = next(spec for spec in layers if spec.kind == kind)
        sizes = [int(torch.Size(spec.shape).numel()) * itemsize for spec in layer.weights]
        tiers = choose_tiers(sizes, policy.weights)
        weights = {f"weights.{tier}": sum(s for s, t in zip(sizes, tiers, strict=True) if t == tier)
                   / sum(sizes) for tier in TIERS}
        fractions[kind] = {**weights, **shared}
    return fractions


def _shares(what: str, tiers: list[str]) -> dict[str, float]:
    return {f"{what}.{tier}": tiers.count(tier) / max(len(tiers), 1) for tier in TIERS}


def table_seconds(cfg: ModelConfig, layers: list[LayerSpec], policy: Policy, workload: Workload,
                  profile: HardwareProfile, dtype: torch.dtype) -> tuple[float, float, float]:
    """(prefill s of a full block, decode s of a full block, total s of the table)."""
    fractions = policy_fractions(layers, policy, dtype.itemsize)
    groups = table_blocks(workload.lengths(), policy.gpu_batch_size, policy.num_gpu_batches)
    total, per_block = _prefix_seconds(cfg, layers, workload, profile, dtype, fractions,
                                       compression_of(policy)), []
    for count, batches in groups:
        prefill, decode = (token_seconds(
            token_costs(cfg, layers, batches, workload.gen_len, workload.shared_prefix, phase,
                        profile, dtype, policy.cpu_attention, compression_of(policy)),
            fractions, policy.overlap)
            for phase in ("prefill", "decode"))
        per_block.append((prefill, decode * (workload.gen_len - 1)))
        total += count * sum(per_block[-1])
    return *per_block[0], total


def compression_of(policy: Policy) -> Compression:
    return Compression(policy.compress_weights, policy.compress_cache)


def _prefix_seconds(cfg, layers, workload, profile, dtype, fractions, compression) -> float:
    if not workload.shared_prefix:
        return 0.0
    costs = token_costs(cfg, layers, [Batch(1, workload.shared_prefix)], 0, 0, "prefill",
                        profile, dtype, compression=compression)
    return token_seconds(costs, fractions, overlap=True)


def predicted_disk_bytes(cfg: ModelConfig, layers: list[LayerSpec], policy: Policy,
                         workload: Workload, dtype: torch.dtype) -> dict[str, float]:
    """Bytes over the disk link for the whole table ("disk->device", "device->disk"), as the
    engine's stats count them: disk-homed weights read at every token of every block; KV cache
    entries homed on disk read at every decode step and written at every token; hidden states
    homed on disk written and read once per layer and token. Rows run to gen_len."""
    itemsize = dtype.itemsize
    weights = weight_home_bytes(layers, policy, itemsize)["disk"]
    cache_share, hidden_share = policy.cache.disk / 100, policy.activations.disk / 100
    ratio = quant_ratio(dtype) if policy.compress_cache else 1.0
    decoders = sum(layer.kind == "decoder" for layer in layers)
    extra = workload.shared_prefix + workload.gen_len
    reads = writes = 0.0
    for count, batches in table_blocks(workload.lengths(), policy.gpu_batch_size,
                                       policy.num_gpu_batches):
        caches = sum(cache_entry_bytes(cfg, batch.rows, batch.width + extra, itemsize)
                     for batch in batches) * decoders * cache_share * ratio
        hidden = sum(hidden_bytes(cfg, batch.rows, batch.width + workload.gen_len - 1, itemsize)
                     for batch in batches) * (len(layers) - 1) * hidden_share
        reads += count * (workload.gen_len * weights + (workload.gen_len - 1) * caches + hidden)
        writes += count * (workload.gen_len * caches + hidden)
    return {"disk->device": reads, "device->disk": writes}


def predict(cfg: ModelConfig, layers: list[LayerSpec], policy: Policy, workload: Workload,
            profile: HardwareProfile, dtype: torch.dtype) -> Prediction:
    prefill, decode, total = table_seconds(cfg, layers, policy, workload, profile, dtype)
    shared_ram = profile.device == "cpu"  # the device tier is RAM: host homes used in place
    shape = BlockShape.first_block(workload.lengths(), policy, workload.gen_len,
                                   workload.shared_prefix)
    return Prediction(
        prefill_s=prefill, decode_s=decode, total_s=total,
        tokens_per_s=workload.rows * workload.gen_len / total,
        peak_bytes=block_peaks(cfg, layers, policy, shape, dtype, shared_ram, lag=1),
        peak_bound=block_peaks(cfg, layers, policy, shape, dtype, shared_ram, lag=PLANNING_LAG,
                               remade=True),
    )
