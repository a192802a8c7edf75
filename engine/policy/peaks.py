"""Peak bytes per tier for a policy, by replaying the engine's ledger over the block schedule.

The engine charges its `Ledger` at a handful of points (see `engine.runner` and
`engine.storage.tiers`): weight homes once; a fetch of anything not used where it lives charges
the device until released (on a CPU host homes are used in place, and disk reads and writes go
through page-aligned staging buffers); a prefill KV buffer is allocated on the device and then
handed to its home; a hidden state is adopted on the device and homed by its store; a compute
charges its workspace. `block_peaks` walks the very step list the executor runs (`token_steps`) and applies
the same charges, for the shared-prefix block (if any), the prefill token and the last decode
token of the largest block. Loads are charged when issued (the thread pool starts them at once);
a store is counted as finishing only after the next compute, since on a busy box the pool may
not get to it sooner: a slight overestimate that keeps plans inside their budgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from engine.batch import cut_batches
from engine.config import ModelConfig
from engine.model import LayerSpec
from engine.model.workspace import workspace_bytes
from engine.policy.memory import (
    cache_entry_bytes,
    entry_tiers,
    fetched_bytes,
    hidden_bytes,
    quantized_bytes,
    weight_home_bytes,
    weight_load_bytes,
)
from engine.policy.policy import TIERS, Policy
from engine.schedule import (
    Compute,
    FreeWeights,
    LoadCache,
    LoadHidden,
    LoadWeights,
    StoreCache,
    StoreHidden,
    token_steps,
)


@dataclass(frozen=True)
class BlockShape:
    """One block of GPU batches as the engine forms it."""

    rows: tuple[int, ...]  # rows of each GPU batch
    widths: tuple[int, ...]  # each batch's longest prompt: its prefill width
    gen_len: int  # columns after the prompt (new tokens)
    prefix_len: int = 0  # shared-prefix columns in front of every row

    @classmethod
    def first_block(
        cls, lengths: Sequence[int], policy: Policy, gen_len: int, prefix_len: int = 0
    ) -> BlockShape:
        """The first (largest, longest) block of prompts `lengths` sorted longest first, cut
        into GPU batches as the engine cuts it (`engine.batch.cut_batches`)."""
        block = [int(length) for length in lengths[: policy.block_size]]
        parts = cut_batches(list(range(len(block))), block, policy.gpu_batch_size)
        return cls(tuple(len(part) for part in parts), tuple(block[part[0]] for part in parts),
                   gen_len, prefix_len)

    def capacity(self, batch_idx: int) -> int:
        return self.prefix_len + self.widths[batch_idx] + self.gen_len


class _Ledger:
    def __init__(self, homes: dict[str, int]) -> None:
        self.used = dict(homes)
        self.peak = dict(homes)

    def add(self, tier: str, num_bytes: int) -> None:
        self.used[tier] += num_bytes
        self.peak[tier] = max(self.peak[tier], self.used[tier])


@dataclass
class _Token:
    """What one token of one block charges: sizes per batch, tiers per (layer, batch)."""

    phase: str  # "prefill" | "decode"
    cache: list[int]  # [batch] KV bytes of one layer
    hidden: list[int]  # [batch] bytes of a hidden state at this token
    work: list[list[int]]  # [layer][batch] compute workspace
    cache_tiers: list[list[str]]
    hidden_tiers: list[list[str]]
    weight_loads: list[int]  # [layer]
    cache_home: list[int] | None = None  # [batch] bytes a cache home holds (4-bit: smaller)
    in_place: bool = False  # decode attends to a host cache where it lives
    prefix: list[tuple[str, int, int]] | None = None  # [layer] (tier, home bytes, full bytes)
    shared_ram: bool = False  # a CPU: host homes used in place, disk I/O through staging

    @property
    def compressed(self) -> bool:
        return self.cache_home is not None

    def fetched(self, num_bytes: int, tier: str) -> int:
        return fetched_bytes(num_bytes, tier, self.shared_ram)

    def staged_write(self, num_bytes: int, tier: str) -> int:
        """Device bytes of the staging buffer a write to `tier` copies through."""
        return self.fetched(num_bytes, tier) if tier == "disk" else 0


_OPS = {LoadWeights: 0, FreeWeights: 1, LoadCache: 2, LoadHidden: 3, Compute: 4, StoreCache: 5,
        StoreHidden: 6}


@lru_cache(maxsize=256)
def _compiled_steps(has_cache: tuple[bool, ...], num_batches: int, overlap: bool
                    ) -> tuple[tuple[int, int, int], ...]:
    """`token_steps` as (op, layer, batch) triples: the replay runs them many times."""
    return tuple((_OPS[type(step)], step.layer, getattr(step, "batch", 0))
                 for step in token_steps(list(has_cache), num_batches, overlap))


def _run_token(ledger: _Ledger, token: _Token, steps: tuple, lag: int) -> None:
    """`lag`: computes a store's device release may trail behind (0: at once), except that a
    hidden state's load waits for its store, as the executor makes it."""
    stored: set[tuple[int, int]] = set()
    deferred: set[tuple[int, int]] = set()
    pending: dict[tuple, list] = {}  # in-flight store -> [computes left, its releases]
    for op, layer, batch in steps:
        if op <= 1:  # load / free a layer's weights
            ledger.add("device", token.weight_loads[layer] * (1 if op == 0 else -1))
        elif op == 2:
            _load_cache(ledger, token, layer, batch)
        elif op == 3:
            if (layer - 1, batch) in stored:
                _settle(ledger, pending, ("hidden", layer - 1, batch))
                ledger.add("device", _fetch_hidden(token, layer, batch))
            else:
                deferred.add((layer, batch))
        elif op == 4:
            if (layer, batch) in deferred:
                _settle(ledger, pending, ("hidden", layer - 1, batch))
                ledger.add("device", _fetch_hidden(token, layer, batch))
            if layer > 0 and token.hidden_tiers[layer - 1][batch] != "device":
                ledger.add(token.hidden_tiers[layer - 1][batch], -token.hidden[batch])
            _compute(ledger, token, layer, batch)
            if pending:
                _tick(ledger, pending)
        else:
            cache = op == 5
            charges = (_store_cache(token, layer, batch) if cache else
                       _store(token, token.hidden_tiers[layer][batch], token.hidden[batch], True))
            releases = _charge_new_home(ledger, charges)
            key = ("cache" if cache else "hidden", layer, batch)
            pending[key] = [lag, releases]
            if not cache:
                stored.add((layer, batch))
            if lag == 0:
                _settle(ledger, pending, key)
    _settle(ledger, pending)


def _charge_new_home(ledger: _Ledger, charges: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """A store allocates its new home first and releases the device lease when it is done:
    charge the home now, return the release for later."""
    for tier, num_bytes in charges:
        if num_bytes > 0:
            ledger.add(tier, num_bytes)
    return [(tier, num_bytes) for tier, num_bytes in charges if num_bytes <= 0]


def _tick(ledger: _Ledger, pending: dict[tuple, list]) -> None:
    """A compute has run: finish the stores whose lag has run out."""
    for key in list(pending):
        pending[key][0] -= 1
        if pending[key][0] <= 0:
            _settle(ledger, pending, key)


def _settle(ledger: _Ledger, pending: dict[tuple, list], key: tuple | None = None) -> None:
    """Finish the in-flight store `key` (all of them when None)."""
    keys = list(pending) if key is None else [key] if key in pending else []
    for done in keys:
        for tier, num_bytes in pending.pop(done)[1]:
            ledger.add(tier, num_bytes)


def _load_cache(ledger: _Ledger, token: _Token, layer: int, batch: int) -> None:
    tier, full = token.cache_tiers[layer][batch], token.cache[batch]
    if token.phase == "prefill":
        ledger.add("device", full)  # a fresh buffer for the whole generation
        if token.prefix is not None:  # the shared prefix, fetched, copied in and released
            lease = _fetch_peak(token, *token.prefix[layer])
            ledger.add("device", lease)
            ledger.add("device", -lease)
    elif token.compressed:  # codes fetched, dequantized into a full lease, codes released
        codes = token.fetched(token.cache_home[batch], tier)
        ledger.add("device", codes + full)
        ledger.add("device", -codes)
    elif not (token.in_place and tier == "host"):
        ledger.add("device", token.fetched(full, tier))


def _fetch_peak(token: _Token, tier: str, stored: int, full: int) -> int:
    """Device bytes a fetch holds at its peak: the codes copied over (when not used in place)
    and, when compressed, the full tensor they are dequantized into."""
    return token.fetched(stored, tier) + (full if token.compressed else 0)


def _store_cache(token: _Token, layer: int, batch: int) -> list[tuple[str, int]]:
    tier, full = token.cache_tiers[layer][batch], token.cache[batch]
    if token.compressed:  # a new home of 4-bit codes on any tier, or a write-back of them
        home = [(tier, token.cache_home[batch])] if token.phase == "prefill" else []
        staged = token.staged_write(token.cache_home[batch], tier)
        return [*home, ("device", staged), ("device", -full - staged)]
    if token.in_place and tier == "host" and token.phase == "decode":
        return []  # updated where it lives: nothing was charged
    if token.phase == "decode":  # a write-back releases what the load charged
        return _store(token, tier, token.fetched(full, tier), new_home=False)
    return _store(token, tier, full, new_home=True)


def _fetch_hidden(token: _Token, layer: int, batch: int) -> int:
    """Device bytes a hidden-state load charges: its size, unless its home was the device
    (then the home's charge moves to the lease; on a CPU a host home too). The home off the
    device is freed after the copy, counted at the compute that uses it, since the pool may
    run the copy late."""
    tier = token.hidden_tiers[layer - 1][batch]
    return 0 if tier == "device" else _hidden_lease(token, layer, batch)


def _hidden_lease(token: _Token, layer: int, batch: int) -> int:
    """Device bytes the input lease of (layer, batch) holds until its compute releases it."""
    tier = token.hidden_tiers[layer - 1][batch]
    return token.fetched(token.hidden[batch], tier) or token.hidden[batch]


def _compute(ledger: _Ledger, token: _Token, layer: int, batch: int) -> None:
    ledger.add("device", token.work[layer][batch])
    ledger.add("device", -token.work[layer][batch])
    if layer > 0:
        ledger.add("device", -_hidden_lease(token, layer, batch))  # the input is released
    if layer < len(token.weight_loads) - 1:
        ledger.add("device", token.hidden[batch])  # the output is adopted


def _store(token: _Token, tier: str, num_bytes: int, new_home: bool) -> list[tuple[str, int]]:
    """Charges a store makes: a new home off the device takes the bytes from the device lease
    (a disk write copies through a staging buffer first); a write-back to an existing home
    only releases the lease (written from its own staging buffer)."""
    if tier == "device":
        return []  # the lease becomes the home (prefill) or was never charged (decode)
    if new_home:
        staged = token.staged_write(num_bytes, tier)
        return [(tier, num_bytes), ("device", staged), ("device", -num_bytes - staged)]
    return [("device", -num_bytes)]


def _token(cfg: ModelConfig, layers: list[LayerSpec], policy: Policy, shape: BlockShape,
           itemsize: int, phase: str, shared_ram: bool) -> _Token:
    batches = range(len(shape.rows))
    new = [shape.widths[b] if phase == "prefill" else 1 for b in batches]
    # columns attended at this token: all of the prompt at prefill, all but one at the last step
    later = 0 if phase == "prefill" else shape.gen_len - 1
    attended = [shape.prefix_len + shape.widths[b] + later for b in batches]
    by_kind = {kind: [workspace_bytes(cfg, kind, shape.rows[b], new[b], attended[b], itemsize)
                      for b in batches] for kind in {layer.kind for layer in layers}}
    work = [by_kind[layer.kind] for layer in layers]
    return _Token(
        phase=phase,
        cache=[cache_entry_bytes(cfg, shape.rows[b], shape.capacity(b), itemsize) for b in batches],
        hidden=[hidden_bytes(cfg, shape.rows[b], new[b], itemsize) for b in batches],
        work=work,
        cache_tiers=entry_tiers(len(layers), len(shape.rows), policy.cache),
        hidden_tiers=entry_tiers(len(layers), len(shape.rows), policy.activations),
        weight_loads=weight_load_bytes(layers, policy, itemsize, shared_ram),
        cache_home=[quantized_bytes(cfg, shape.rows[b], shape.capacity(b), itemsize)
                    for b in batches] if policy.compress_cache else None,
        in_place=policy.cpu_attention or shared_ram,
        shared_ram=shared_ram,
    )


def block_peaks(cfg: ModelConfig, layers: list[LayerSpec], policy: Policy, shape: BlockShape,
                dtype: torch.dtype, shared_ram: bool, lag: int = 1) -> dict[str, int]:
    """Predicted `engine.stats.peak_bytes` for generating one block of `shape` (the largest).
    `shared_ram`: the device tier is RAM (a CPU). `lag`: how many computes a store to the host
    or disk may trail (overlap on): 1 is what a quiet machine shows, 2 a bound for planning."""
    itemsize = dtype.itemsize
    lag = lag if policy.overlap else 0  # without overlap every step runs in order
    ledger = _Ledger(weight_home_bytes(layers, policy, itemsize))
    has_cache = tuple(layer.kind == "decoder" for layer in layers)
    prefix = None
    if shape.prefix_len:  # the prefix runs first as a one-row block and keeps its caches
        one_row = BlockShape((1,), (shape.prefix_len,), 0)
        token = _token(cfg, layers, policy, one_row, itemsize, "prefill", shared_ram)
        _run_token(ledger, token, _compiled_steps(has_cache, 1, policy.overlap), lag)
        stored = token.cache_home[0] if token.compressed else token.cache[0]
        prefix = [(tiers[0], stored, token.cache[0]) for tiers in token.cache_tiers]
    steps = _compiled_steps(has_cache, len(shape.rows), policy.overlap)
    phases = ("prefill", "decode") if shape.gen_len > 1 else ("prefill",)
    for phase in phases:
        token = _token(cfg, layers, policy, shape, itemsize, phase, shared_ram)
        token.prefix = prefix
        _run_token(ledger, token, steps, lag)
    return {tier: ledger.peak[tier] for tier in TIERS}
