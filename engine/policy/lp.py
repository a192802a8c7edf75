"""One candidate block shape's placement LP, solved with pulp/CBC.

Variables: the fraction of weights, KV cache and activations on each tier, two binaries that
say whether the cache and the activations sit wholly on the device (else the device also holds
their in-flight copies), and one time variable per (block group, phase, layer kind) bounded
below by compute and by each link (overlap) or by their sum (no overlap). Objective: the
table's seconds. Memory is modelled by upper bounds of the engine's charges (`MemoryTerms`);
the solver checks the rounded policy against the exact replay in `engine.policy.peaks`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import pulp
import torch

from engine.compression import quant_ratio
from engine.config import ModelConfig
from engine.model import LayerSpec
from engine.model.workspace import workspace_bytes
from engine.policy.cost import EXACT, Compression, LayerCost
from engine.policy.memory import cache_entry_bytes, hidden_bytes
from engine.policy.peaks import BlockShape
from engine.policy.policy import TIERS

WHATS = ("weights", "cache", "activations")
TIE_BREAK = 1e-3  # weight of hidden I/O seconds in the objective
PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class MemoryTerms:
    """Bytes of one candidate's largest block, for the LP's linear memory model."""

    weights: int  # all weights
    window: int  # non-resident weights loaded at once (one layer, two with overlap)
    cache: int  # every KV cache of the block, and the shared prefix's
    cache_lease: int  # device bytes of caches in flight when they live off the device
    hidden: dict[str, int]  # per phase: one layer's hidden states over the block's batches
    hidden_lease: dict[str, int]  # per phase: hidden states in flight when homed elsewhere
    work: dict[str, int]  # per phase: the largest compute workspace


def memory_terms(cfg: ModelConfig, layers: list[LayerSpec], shape: BlockShape, dtype: torch.dtype,
                 overlap: bool, lag: int, compression: Compression = EXACT) -> MemoryTerms:
    """4-bit homes hold `quant_ratio` of the bytes; their loads are dequantized to full size."""
    itemsize, batches = dtype.itemsize, range(len(shape.rows))
    layer_bytes = [sum(int(torch.Size(s.shape).numel()) for s in layer.weights) * itemsize
                   for layer in layers]
    # with overlap, two neighbouring layers' weights at once (a one-layer pipeline stage: one)
    window = max((a + b for a, b in pairwise(layer_bytes)), default=max(layer_bytes)) if (
        overlap) else max(layer_bytes)
    weight_scale = quant_ratio(dtype) if compression.weights else 1.0
    cache_scale = quant_ratio(dtype) if compression.cache else 1.0
    in_flight = 2 + lag if overlap else 1  # this compute's, the next one's, trailing stores
    caches = [cache_entry_bytes(cfg, shape.rows[b], shape.capacity(b), itemsize) for b in batches]
    decoders = sum(layer.kind == "decoder" for layer in layers)
    prefix = cache_entry_bytes(cfg, 1, shape.prefix_len, itemsize)
    kinds = {layer.kind for layer in layers}
    hidden, lease, work = {}, {}, {}
    for phase in PHASES:
        new = list(shape.widths) if phase == "prefill" else [1] * len(shape.rows)
        later = 0 if phase == "prefill" else shape.gen_len - 1
        sizes = [hidden_bytes(cfg, shape.rows[b], new[b], itemsize) for b in batches]
        hidden[phase], lease[phase] = sum(sizes), in_flight * max(sizes)
        work[phase] = max(workspace_bytes(cfg, kind, shape.rows[b], new[b],
                                          shape.prefix_len + shape.widths[b] + later, itemsize)
                          for kind in kinds for b in batches)
    return MemoryTerms(int(sum(layer_bytes) * weight_scale), window,
                       int(decoders * (sum(caches) + prefix) * cache_scale),
                       in_flight * max(caches) + prefix, hidden, lease, work)


@lru_cache(maxsize=1)
def _cbc() -> pulp.LpSolver:
    """CBC, quiet: a system CBC (COIN_CMD) when there is one, else the binary pulp bundles
    (PULP_CBC_CMD, which pulp 3.3+ marks deprecated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        coin = pulp.COIN_CMD(msg=False)
        return coin if coin.available() else pulp.PULP_CBC_CMD(msg=False)


def _variable(prob: pulp.LpProblem, name: str, low: float | None = 0, up: float | None = None,
              cat: str = "Continuous") -> pulp.LpVariable:
    if hasattr(prob, "add_variable"):  # pulp >= 3.3
        return prob.add_variable(name, low, up, cat)
    return pulp.LpVariable(name, low, up, cat)


@dataclass(frozen=True)
class LpResult:
    fractions: dict[str, float]  # "cache.host" -> share
    seconds: float  # the LP's objective: the table's time


def _link_sum(expr: dict[str, float], frac: dict[str, pulp.LpVariable]) -> pulp.LpAffineExpression:
    return pulp.lpSum(coeff * frac[var] for var, coeff in expr.items())


def _memory(prob: pulp.LpProblem, terms: MemoryTerms, frac: dict, budgets: dict[str, float]
            ) -> None:
    whole = {what: _variable(prob, f"{what}_all_on_device", 0, 1, "Binary")
             for what in ("cache", "activations")}
    for what, flag in whole.items():
        prob += frac[f"{what}.device"] >= flag
    rows = {}
    for phase in PHASES:
        rows[f"device_{phase}"] = (
            terms.weights * frac["weights.device"] + terms.window * (1 - frac["weights.device"])
            + terms.cache * frac["cache.device"] + terms.cache_lease * (1 - whole["cache"])
            + terms.hidden[phase] * frac["activations.device"]
            + terms.hidden_lease[phase] * (1 - whole["activations"]) + terms.work[phase]
            <= budgets["device"])
    for tier in ("host", "disk"):
        rows[tier] = (terms.weights * frac[f"weights.{tier}"] + terms.cache * frac[f"cache.{tier}"]
                      + terms.hidden["prefill"] * frac[f"activations.{tier}"] <= budgets[tier])
    for name, row in rows.items():
        prob += row, name


def _time(prob: pulp.LpProblem, groups: list[tuple[int, dict[str, dict[str, LayerCost]]]],
          gen_len: int, frac: dict, overlap: bool) -> pulp.LpAffineExpression:
    total = []
    for group_idx, (count, phases) in enumerate(groups):
        for phase, costs in phases.items():
            tokens = 1 if phase == "prefill" else gen_len - 1
            for kind, cost in costs.items():
                pace = _variable(prob, f"t_{group_idx}_{phase}_{kind}")
                links = [_link_sum(expr, frac) for expr in cost.links.values()]
                compute = cost.compute_s + _link_sum(cost.compute_vars, frac)
                if overlap:
                    prob += pace >= compute
                    for link in links:
                        prob += pace >= link
                else:
                    prob += pace >= compute + pulp.lpSum(links)
                weight = count * tokens * cost.count
                total.append(weight * pace)
                # among placements equally fast, prefer the one that moves the fewest bytes
                total += [TIE_BREAK * weight * link for link in links]
    return pulp.lpSum(total)


def solve_lp(terms: MemoryTerms, groups: list[tuple[int, dict[str, dict[str, LayerCost]]]],
             gen_len: int, budgets: dict[str, float], overlap: bool) -> LpResult | None:
    """The fastest placement of one candidate within `budgets`; None when none fits."""
    prob = pulp.LpProblem("placement", pulp.LpMinimize)
    frac = {f"{what}.{tier}": _variable(prob, f"{what}_{tier}", 0, 1)
            for what in WHATS for tier in TIERS}
    for what in WHATS:
        prob += pulp.lpSum(frac[f"{what}.{tier}"] for tier in TIERS) == 1
    _memory(prob, terms, frac, budgets)
    prob += _time(prob, groups, gen_len, frac, overlap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        prob.solve(_cbc())
    if pulp.LpStatus[prob.status] != "Optimal":
        return None
    fractions = {name: max(0.0, min(1.0, var.value() or 0.0)) for name, var in frac.items()}
    return LpResult(fractions, float(pulp.value(prob.objective)))
