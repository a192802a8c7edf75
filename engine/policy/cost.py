"""The cost model: seconds per token of a block, per layer kind, as linear functions of where
weights, KV cache and activations sit.

A placement is a set of fractions, one per (kind, tier), e.g. "weights.host" = 0.3. Every I/O
term is linear in them, so the same expressions give a concrete policy's time (`evaluate`) and
the LP's constraints (`engine.policy.solver`). Per layer and token: with overlap the slowest of
compute and each link sets the pace (the I/O pool runs links side by side); without, they add.
Compute is the larger of FLOPs / matmul rate and bytes touched / memory bandwidth, plus the
fixed cost of one call, for each GPU batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.compression import quant_ratio
from engine.config import ModelConfig
from engine.model import LayerSpec
from engine.policy.hardware import HardwareProfile
from engine.policy.memory import cache_entry_bytes, hidden_bytes

KINDS = ("embed", "decoder", "head")


def kinds_of(layers: list[LayerSpec]) -> list[str]:
    """The layer kinds present (a pipeline stage's slice may lack the embedding or head)."""
    return [kind for kind in KINDS if any(spec.kind == kind for spec in layers)]
Expr = dict[str, float]  # fraction name ("cache.disk") -> seconds per unit of that fraction


@dataclass(frozen=True)
class Compression:
    """What a policy holds as 4-bit group-wise codes: fewer bytes on every link and in every
    home, and a dequantization (a quantization for a stored cache) at every use."""

    weights: bool = False
    cache: bool = False


EXACT = Compression()


@dataclass(frozen=True)
class Batch:
    rows: int
    width: int  # prompt width (its longest prompt)


@dataclass
class LayerCost:
    """One layer of a kind, one token of a block."""

    count: int  # layers of this kind
    compute_s: float
    links: dict[str, Expr] = field(default_factory=dict)  # link -> seconds (linear)
    compute_vars: Expr = field(default_factory=dict)  # compute that moves with the placement

    def compute(self, fractions: dict[str, float]) -> float:
        return self.compute_s + sum(c * fractions.get(v, 0.0) for v, c in self.compute_vars.items())

    def io(self, link: str, var: str, seconds: float) -> None:
        expr = self.links.setdefault(link, {})
        expr[var] = expr.get(var, 0.0) + seconds


class _Mover:
    """Adds the link seconds of fetching to / storing from the device, per home tier."""

    def __init__(self, profile: HardwareProfile) -> None:
        self.bw, self.latency = profile.bandwidth, profile.disk_latency_s
        self.write_latency = profile.disk_write_latency_s
        self.gpu = profile.device == "cuda"

    def fetch(self, cost: LayerCost, what: str, num_bytes: float, files: float = 1,
              from_host: bool = True) -> None:
        """On a CPU a host home is used in place: nothing crosses host->device."""
        if from_host and self.gpu:
            cost.io("host->device", f"{what}.host", num_bytes / self.bw["host->device"])
        cost.io("disk->host", f"{what}.disk", num_bytes / self.bw["disk->host"] + files * self.latency)
        if self.gpu:  # disk reads land in host memory, then cross to the GPU
            cost.io("host->device", f"{what}.disk", num_bytes / self.bw["host->device"])

    def store(self, cost: LayerCost, what: str, num_bytes: float, files: float = 1,
              to_host: bool = True) -> None:
        if to_host and self.gpu:
            cost.io("device->host", f"{what}.host", num_bytes / self.bw["device->host"])
        cost.io("host->disk", f"{what}.disk",
                num_bytes / self.bw["host->disk"] + files * self.write_latency)
        if self.gpu:
            cost.io("device->host", f"{what}.disk", num_bytes / self.bw["device->host"])


def _weight_stats(layer: LayerSpec, itemsize: int) -> tuple[int, int, int]:
    """(bytes, tensors, parameters used in matmuls per token) of one layer."""
    sizes = [int(torch.Size(spec.shape).numel()) for spec in layer.weights]
    gathered = {"tokens", "positions"}  # embedding tables are looked up, not multiplied
    matmul = sum(size for spec, size in zip(layer.weights, sizes, strict=True)
                 if len(spec.shape) == 2 and spec.name not in gathered)
    return sum(sizes) * itemsize, len(sizes), matmul


def _stored_matrices(layer: LayerSpec) -> int:
    """Elements of the layer's 2-D weights: what 4-bit compression packs."""
    return sum(int(torch.Size(spec.shape).numel()) for spec in layer.weights if len(spec.shape) == 2)


def _compute_s(cfg: ModelConfig, layer: LayerSpec, batch: Batch, new: int, attended: float,
               profile: HardwareProfile, dtype: torch.dtype) -> tuple[float, float]:
    """(seconds of one layer's compute for one batch, of which attention over the cache)."""
    weight_bytes, _, matmul = _weight_stats(layer, dtype.itemsize)
    tokens = batch.rows * (1 if layer.kind == "head" else new)  # the head sees last positions
    touched = weight_bytes + tokens * cfg.hidden_size * dtype.itemsize * 2
    dense = max(2 * tokens * matmul / profile.flops(dtype, tokens),
                touched / profile.bandwidth["device->device"])
    attention = 0.0
    if layer.kind == "decoder":
        flops = 4 * batch.rows * cfg.num_heads * new * attended * cfg.head_dim
        cache = 2 * batch.rows * cfg.num_kv_heads * attended * cfg.head_dim * dtype.itemsize
        attention = max(flops / profile.flops(dtype), cache / profile.bandwidth["device->device"])
    return dense + attention + profile.call_overhead_s, attention


def _attend_on_host(cost: LayerCost, cfg: ModelConfig, batch: Batch, attended: float,
                    on_device_s: float, mover: _Mover, profile: HardwareProfile,
                    itemsize: int) -> None:
    """cpu_attention at decode: a host-resident cache is attended to on the host; only the new
    q/k/v go over and the attention output comes back."""
    flops = 4 * batch.rows * cfg.num_heads * attended * cfg.head_dim
    var = "cache.host"
    cost.compute_vars[var] = (cost.compute_vars.get(var, 0.0)
                              + flops / profile.cpu_attention_flops - on_device_s)
    qkv = batch.rows * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim * itemsize
    cost.io("device->host", var, qkv / mover.bw["device->host"])
    cost.io("host->device", var, batch.rows * cfg.num_heads * cfg.head_dim * itemsize
            / mover.bw["host->device"])


def _cache_io(cost: LayerCost, mover: _Mover, cache: int, phase: str, in_place: bool) -> None:
    if phase == "decode":
        mover.fetch(cost, "cache", cache, from_host=not in_place)
    mover.store(cost, "cache", cache, to_host=not (in_place and phase == "decode"))


def token_costs(
    cfg: ModelConfig, layers: list[LayerSpec], batches: list[Batch], gen_len: int,
    prefix_len: int, phase: str, profile: HardwareProfile, dtype: torch.dtype,
    cpu_attention: bool = False, compression: Compression = EXACT,
) -> dict[str, LayerCost]:
    """Per layer kind, the cost of one token of a block of `batches` (decode: an average step)."""
    mover, itemsize = _Mover(profile), dtype.itemsize
    in_place = cpu_attention and phase == "decode"
    ratio = quant_ratio(dtype)
    costs: dict[str, LayerCost] = {}
    for kind in kinds_of(layers):
        layer = next(spec for spec in layers if spec.kind == kind)
        weight_bytes, tensors, _ = _weight_stats(layer, itemsize)
        cost = LayerCost(sum(spec.kind == kind for spec in layers), 0.0)
        if compression.weights:  # every use dequantizes the codes, wherever they live
            packed = _stored_matrices(layer)
            weight_bytes -= packed * itemsize * (1 - ratio)
            cost.compute_s += packed / profile.dequant_rate
        mover.fetch(cost, "weights", weight_bytes, tensors)
        for batch in batches:
            new = batch.width if phase == "prefill" else 1
            attended = prefix_len + batch.width + (0 if phase == "prefill" else gen_len / 2)
            seconds, attention_s = _compute_s(cfg, layer, batch, new, attended, profile, dtype)
            cost.compute_s += seconds
            hidden = hidden_bytes(cfg, batch.rows, new, itemsize)
            if kind != "head":
                mover.store(cost, "activations", hidden)
            if kind != "embed":
                mover.fetch(cost, "activations", hidden)
            if kind == "decoder":
                capacity = prefix_len + batch.width + gen_len
                cache = cache_entry_bytes(cfg, batch.rows, capacity, itemsize)
                if compression.cache:  # dequantized at each load, quantized at each store
                    cost.compute_s += 2 * cache / itemsize / profile.dequant_rate
                    cache = int(cache * ratio)
                _cache_io(cost, mover, cache, phase, in_place)
                if in_place:
                    _attend_on_host(cost, cfg, batch, attended, attention_s, mover, profile,
                                    itemsize)
        costs[kind] = cost
    return costs


def layer_seconds(cost: LayerCost, fractions: dict[str, float], overlap: bool) -> float:
    links = [sum(coeff * fractions.get(var, 0.0) for var, coeff in expr.items())
             for expr in cost.links.values()]
    compute = cost.compute(fractions)
    return max([compute, *links]) if overlap else compute + sum(links)


def token_seconds(costs: dict[str, LayerCost], fractions: dict[str, dict[str, float]],
                  overlap: bool) -> float:
    """`fractions`: per layer kind (a concrete policy splits each layer a little differently)."""
    return sum(cost.count * layer_seconds(cost, fractions[kind], overlap)
               for kind, cost in costs.items())
