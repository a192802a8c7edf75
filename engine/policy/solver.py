"""The placement solver: for each candidate block shape (gpu_batch_size, num_gpu_batches), an LP
over where weights, cache and activations live; the fastest policy that fits wins.

Candidates are visited best bound first (compute alone, plus the bytes that cannot stay on the
device moved at the fastest link), and the search stops once no bound beats the best plan
found. Each LP answer is rounded to a `Policy` and checked against the exact replay of the
engine's ledger; when the rounding overshoots a tier, that tier's LP budget shrinks and the
candidate is solved again.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import torch

from engine.config import ModelConfig
from engine.model import LayerSpec
from engine.policy.cost import EXACT, Compression, LayerCost, layer_seconds, token_costs
from engine.policy.hardware import HardwareProfile
from engine.policy.lp import PHASES, MemoryTerms, memory_terms, solve_lp
from engine.policy.peaks import BlockShape, block_peaks
from engine.policy.policy import TIERS, Placement, Policy
from engine.policy.predict import (
    PLANNING_LAG,
    Prediction,
    compression_of,
    policy_fractions,
    predict,
    table_blocks,
    table_seconds,
)
from engine.policy.workload import Workload
from engine.storage import MemoryBudgetError
from engine.storage.ledger import format_bytes

MAX_GPU_BATCH = 1024  # beyond this a bigger GPU batch buys nothing but workspace
MAX_GPU_BATCHES = 64
REFITS = 4  # LP re-solves per candidate when rounding overshoots a budget
# with compression allowed: 4-bit weights alone (the KV cache exact), or weights and KV cache
COMPRESSIONS = (EXACT, Compression(weights=True), Compression(weights=True, cache=True))


@dataclass(frozen=True)
class Plan:
    policy: Policy
    tokens_per_s: float  # predicted, generated tokens over the whole table
    peak_bytes: dict[str, int]  # predicted peaks per tier
    why: str  # the binding constraint, in words
    prediction: Prediction | None = None


@dataclass(frozen=True)
class _Problem:
    cfg: ModelConfig
    layers: list[LayerSpec]
    workload: Workload
    budgets: dict[str, int]
    profile: HardwareProfile
    dtype: torch.dtype
    lengths: np.ndarray  # prompt lengths, longest first


def candidates(rows: int) -> list[tuple[int, int]]:
    """(gpu_batch_size, num_gpu_batches) with blocks of at most `rows` rows: powers of two, and
    the shapes whose block is the whole table."""
    sizes = {1 << p for p in range(11) if 1 << p <= min(rows, MAX_GPU_BATCH)}
    sizes.add(min(rows, MAX_GPU_BATCH))
    shapes = set()
    for size in sizes:
        counts = {1 << p for p in range(7) if size * (1 << p) <= rows}
        counts.add(min(rows // size, MAX_GPU_BATCHES))
        shapes |= {(size, count) for count in counts if 1 <= count <= MAX_GPU_BATCHES}
    return sorted(shapes)


def _groups(problem: _Problem, size: int, count: int, cpu_attention: bool = False,
            compression: Compression = EXACT) -> list:
    """[(blocks, {phase: {kind: LayerCost}})]: the cost expressions of each block group."""
    wl = problem.workload
    groups = []
    for blocks, batches in table_blocks(problem.lengths, size, count):
        phases = {phase: token_costs(problem.cfg, problem.layers, batches, wl.gen_len,
                                     wl.shared_prefix, phase, problem.profile, problem.dtype,
                                     cpu_attention, compression)
                  for phase in PHASES}
        if wl.gen_len == 1:
            phases.pop("decode")
        groups.append((blocks, phases))
    return groups


def _bound(problem: _Problem, groups: list, terms: MemoryTerms, overlap: bool) -> float:
    """Seconds no placement of this candidate can beat: compute, and at each decode token the
    bytes that cannot stay on the device (or in host memory) moved at the fastest links."""
    bw, budgets = problem.profile.bandwidth, problem.budgets
    beyond_device = max(0, terms.weights + terms.cache - budgets["device"])
    beyond_host = max(0, beyond_device - budgets["host"])
    io = max(beyond_device / (bw["host->device"] + bw["disk->host"]),
             beyond_host / bw["disk->host"])
    total = 0.0
    for blocks, phases in groups:
        for phase, costs in phases.items():
            tokens = 1 if phase == "prefill" else problem.workload.gen_len - 1
            compute = sum(cost.count * cost.compute_s for cost in costs.values())
            moved = io if phase == "decode" else 0.0
            total += blocks * tokens * (max(compute, moved) if overlap else compute + moved)
    return total


def _round(size: int, count: int, fractions: dict[str, float], overlap: bool,
           cpu_attention: bool, compression: Compression) -> Policy:
    def placement(what: str) -> Placement:
        device = round(100 * fractions[f"{what}.device"], 1)
        host = min(round(100 * fractions[f"{what}.host"], 1), 100 - device)
        return Placement(device, host, round(100 - device - host, 1))

    return Policy(size, count, placement("weights"), placement("cache"), placement("activations"),
                  overlap=overlap, cpu_attention=cpu_attention,
                  compress_weights=compression.weights, compress_cache=compression.cache)


def _fit(problem: _Problem, size: int, count: int, overlap: bool, groups: list,
         beat: float = float("inf"), cpu_attention: bool = False,
         compression: Compression = EXACT) -> Policy | None:
    """The LP's placement for this candidate, rounded to a policy whose replayed peaks fit the
    budgets; None when nothing fits or the LP already says it cannot beat `beat` seconds."""
    wl = problem.workload
    shape = BlockShape.first_block(problem.lengths, Policy(size, count), wl.gen_len,
                                   wl.shared_prefix)
    terms = memory_terms(problem.cfg, problem.layers, shape, problem.dtype, overlap, PLANNING_LAG,
                         compression)
    budgets = {tier: float(problem.budgets[tier]) for tier in TIERS}
    for _ in range(REFITS + 1):
        result = solve_lp(terms, groups, wl.gen_len, budgets, overlap)
        if result is None or result.seconds >= beat:
            return None
        policy = _round(size, count, result.fractions, overlap, cpu_attention, compression)
        peaks = block_peaks(problem.cfg, problem.layers, policy, shape, problem.dtype,
                            problem.profile.device == "cpu", lag=PLANNING_LAG, remade=True)
        over = {tier: peaks[tier] - problem.budgets[tier] for tier in TIERS
                if peaks[tier] > problem.budgets[tier]}
        if not over:
            return policy
        for tier, excess in over.items():
            budgets[tier] -= excess * 1.05 + 64
    return None


def _minimum_check(problem: _Problem) -> None:
    """Fail with the numbers when not even one row of the longest prompt can run."""
    wl, off = problem.workload, Placement.on("disk")
    one_row = Policy(1, 1, off, off, off, overlap=False)
    shape = BlockShape((1,), (int(problem.lengths[0]),), wl.gen_len, wl.shared_prefix)
    device = block_peaks(problem.cfg, problem.layers, one_row, shape, problem.dtype,
                         problem.profile.device == "cpu", lag=0)
    budgets = problem.budgets
    if device["device"] > budgets["device"]:
        raise MemoryBudgetError(
            f"no placement fits even one row: the device tier needs at least "
            f"{format_bytes(device['device'])} (working set of one layer, one row of "
            f"{shape.widths[0]} + {wl.gen_len} tokens, everything else offloaded); its budget is "
            f"{format_bytes(budgets['device'])}")
    spare = budgets["host"] + budgets["disk"] + budgets["device"] - device["device"]
    if device["disk"] > spare:
        raise MemoryBudgetError(
            f"no placement fits even one row: the weights and one row's cache need at least "
            f"{format_bytes(device['disk'])} on the host and disk tiers together (besides the "
            f"device's working set); their budgets total {format_bytes(spare)}")


def _search(problem: _Problem, compressions: tuple[Compression, ...]) -> Policy | None:
    """The fastest policy over block shapes, overlap on / off and the allowed compressions;
    candidates are tried in order of the time no placement of theirs can beat."""
    entries = []
    for (size, count), compression in product(candidates(problem.workload.rows), compressions):
        groups = _groups(problem, size, count, compression=compression)
        shape = BlockShape.first_block(problem.lengths, Policy(size, count),
                                       problem.workload.gen_len, problem.workload.shared_prefix)
        terms = memory_terms(problem.cfg, problem.layers, shape, problem.dtype, True, 0,
                             compression)
        # without overlap first: where overlapping saves nothing (no bytes move) it only adds
        # I/O threads, which share a CPU's cores with compute (-20% of an in-RAM decode step)
        entries += [(_bound(problem, groups, terms, overlap), -size * count, size, count, overlap,
                     groups, compression) for overlap in (False, True)]
    entries.sort(key=lambda entry: entry[:2])
    best, best_s = None, float("inf")
    for bound, _, size, count, overlap, groups, compression in entries:
        if bound >= best_s:
            break
        for policy in _placements(problem, size, count, overlap, groups, best_s, compression):
            seconds = table_seconds(problem.cfg, problem.layers, policy, problem.workload,
                                    problem.profile, problem.dtype)[2]
            if seconds < best_s:
                best, best_s = policy, seconds
    return best


def _placements(problem: _Problem, size: int, count: int, overlap: bool, groups: list,
                beat: float, compression: Compression) -> list[Policy]:
    """The LP's policy for one candidate; when it puts cache on the host of a GPU machine, also
    the one that attends to that cache in place (cpu_attention; on a CPU the host cache is
    attended in place anyway)."""
    policy = _fit(problem, size, count, overlap, groups, beat, compression=compression)
    if policy is None or policy.cache.host == 0 or problem.profile.device == "cpu":
        return [] if policy is None else [policy]
    in_place = _fit(problem, size, count, overlap,
                    _groups(problem, size, count, True, compression), beat,
                    cpu_attention=True, compression=compression)
    return [policy] if in_place is None else [policy, in_place]


def _pace(problem: _Problem, policy: Policy) -> str:
    """What sets the pace of a decoder layer at the dominant phase."""
    phase = "decode" if problem.workload.gen_len > 1 else "prefill"
    batches = table_blocks(problem.lengths, policy.gpu_batch_size, policy.num_gpu_batches)[0][1]
    cost = token_costs(problem.cfg, problem.layers, batches, problem.workload.gen_len,
                       problem.workload.shared_prefix, phase, problem.profile,
                       problem.dtype, policy.cpu_attention, compression_of(policy))["decoder"]
    fractions = policy_fractions(problem.layers, policy, problem.dtype.itemsize)["decoder"]
    links = {link: layer_seconds(LayerCost(1, 0.0, {link: expr}), fractions, True)
             for link, expr in cost.links.items()}
    link, seconds = max(links.items(), key=lambda item: item[1])
    compute = cost.compute(fractions)
    if seconds <= compute:
        return f"{phase} is compute-bound"
    return f"{phase} waits on {link} transfers ({seconds / compute:.1f}x the compute)"


def _why(problem: _Problem, policy: Policy, prediction: Prediction) -> str:
    budgets, bound = problem.budgets, prediction.peak_bound
    full = [tier for tier in TIERS if bound[tier] >= 0.9 * budgets[tier] and bound[tier] > 0]
    memory = ", ".join(f"{tier} {format_bytes(bound[tier])} of {format_bytes(budgets[tier])}"
                       for tier in full)
    parts = [f"memory binds ({memory})" if full else
             f"memory does not bind (device {format_bytes(bound['device'])} of "
             f"{format_bytes(budgets['device'])})"]
    shares = ", ".join(
        f"{what} {'/'.join(f'{getattr(placement, tier):g}' for tier in TIERS)}"
        for what, placement in (("weights", policy.weights), ("cache", policy.cache),
                                ("activations", policy.activations)))
    parts.append(f"device/host/disk %: {shares}")
    parts.append(_pace(problem, policy))
    rows = problem.workload.rows
    block = f"block {policy.gpu_batch_size}x{policy.num_gpu_batches}"
    parts.append(f"{block} holds the whole table ({rows} rows)" if policy.block_size >= rows
                 else block)
    return "; ".join(parts)


def solve(cfg: ModelConfig, layers: list[LayerSpec], workload: Workload, budgets: dict[str, int],
          profile: HardwareProfile, dtype: torch.dtype, allow_compression: bool = False) -> Plan:
    """The fastest policy for `workload` within `budgets` (bytes per tier). 4-bit weights and
    KV cache change outputs, so they are candidates only when `allow_compression`."""
    extra = workload.gen_len + workload.shared_prefix
    if cfg.family == "opt" and workload.max_prompt_len + extra > cfg.max_positions:
        raise ValueError(
            f"prompts of {workload.max_prompt_len} tokens with {extra} more columns exceed the "
            f"model's {cfg.max_positions} positions")
    problem = _Problem(cfg, layers, workload, dict(budgets), profile, dtype, workload.lengths())
    _minimum_check(problem)
    best = _search(problem, COMPRESSIONS if allow_compression else (EXACT,))
    if best is None:
        raise MemoryBudgetError(
            "no block shape fits the budgets ("
            + ", ".join(f"{tier} {format_bytes(budgets[tier])}" for tier in TIERS)
            + "); raise the device budget")
    policy, prediction = best, predict(cfg, layers, best, workload, profile, dtype)
    return Plan(policy, prediction.tokens_per_s, prediction.peak_bytes,
                _why(problem, policy, prediction), prediction)
