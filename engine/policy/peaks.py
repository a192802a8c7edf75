"""Peak bytes per tier for a policy, by replaying the engine's ledger over the block schedule.

The engine charges its `Ledger` at a handful of points (see `engine.runner` and
`engine.storage.tiers`): weight homes once; a fetch of anything not used where it lives charges
the device until released (on a CPU host homes are used in place); reads and writes of the disk
tier go through staging buffers that the pool keeps, per tensor kind, until the block ends (as
many of a kind as were ever in use at once: `_Ledger.take` / `give` mirror `BufferPool`); a
prefill KV buffer is allocated on the device and then handed to its home; a hidden state is
adopted on the device and homed by its store; a compute charges its workspace. `block_peaks`
walks the very step list the executor runs (`token_steps`) and applies the same charges, for
the shared-prefix block (if any), the prefill token and the last decode token of the largest
block. Loads are charged when issued (the thread pool starts them at once);
a store is counted as finishing only after the next compute, since on a busy box the pool may
not get to it sooner: a slight overestimate that keeps plans inside their budgets. The bound
plans are checked against (`remade`) also counts, at each decode load of a cache used where it
lives, the copy `GpuBatch.catch_up` makes beside it when rows have finished or the cache grows,
held until the store hands it over.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from engine.batch import cut_batches
from engine.config import ModelConfig
from engine.model import LayerSpec
from engine.model.workspace import workspace_bytes
from engine.policy.memory import (
    LayerFetch,
    cache_entry_bytes,
    entry_tiers,
    hidden_bytes,
    quantized_bytes,
    weight_fetches,
    weight_home_bytes,
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
from engine.storage.disk import padded_size


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
    def __init__(self, homes: dict[str, int], staging_tier: str, spare: int = 0) -> None:
        self.used = dict(homes)
        self.peak = dict(homes)
        self.staging_tier = staging_tier
        # extra buffers per cache / hidden-state kind: when stores trail on the I/O pool, one
        # more of a kind can be in use at once than the replay's order says (weights are
        # loaded and freed in program order)
        self.spare = spare
        self._idle: Counter = Counter()  # staging kind -> buffers idle in the pool
        self._seen: set[tuple] = set()
        self._staged = 0

    def add(self, tier: str, num_bytes: int) -> None:
        self.used[tier] += num_bytes
        self.peak[tier] = max(self.peak[tier], self.used[tier])

    def take(self, kind: tuple, num_bytes: int) -> None:
        """A staging buffer of `kind`: an idle one, else a new one charged until `trim`."""
        if kind not in self._seen and kind[0] != "weight" and self.spare:
            self._seen.add(kind)
            self._idle[kind] += self.spare
            self.add(self.staging_tier, padded_size(num_bytes) * self.spare)
            self._staged += padded_size(num_bytes) * self.spare
        if self._idle[kind]:
            self._idle[kind] -= 1
            return
        size = padded_size(num_bytes)
        self.add(self.staging_tier, size)
        self._staged += size

    def give(self, kind: tuple) -> None:
        self._idle[kind] += 1

    def trim(self) -> None:
        """The block has ended: the pool drops its buffers."""
        self.add(self.staging_tier, -self._staged)
        self._staged = 0
        self._idle.clear()
        self._seen.clear()


@dataclass
class _Token:
    """What one token of one block charges: sizes per batch, tiers per (layer, batch)."""

    phase: str  # "prefill" | "decode"
    cache: list[list[int]]  # [layer][batch] KV bytes (a sliding-window layer's ring: fewer)
    hidden: list[int]  # [batch] bytes of a hidden state at this token
    work: list[list[int]]  # [layer][batch] compute workspace
    cache_tiers: list[list[str]]
    hidden_tiers: list[list[str]]
    weight_loads: list[LayerFetch]  # [layer]
    cache_home: list[list[int]] | None = None  # [layer][batch] bytes a home holds (4-bit)
    in_place: bool = False  # decode attends to a host cache where it lives
    prefix: list[tuple[str, int, int]] | None = None  # [layer] (tier, home bytes, full bytes)
    shared_ram: bool = False  # a CPU: host homes used in place, disk I/O through staging
    remade: bool = False  # decode caches used in place are re-made beside their homes

    @property
    def compressed(self) -> bool:
        return self.cache_home is not None

    def remade_bytes(self, num_bytes: int, tier: str) -> int:
        """Device bytes a decode cache's re-made copy (rows dropped, columns grown) holds
        beside its home, where the cache is used in place: the copy, and on a CPU's disk tier
        also the staging buffer its write takes (the copy is not the buffer it was read into).
        A fetched lease is re-made in its stead."""
        if not self.remade or self.leased(num_bytes, tier):
            return 0
        return 2 * num_bytes if tier == "disk" else num_bytes

    def leased(self, num_bytes: int, tier: str) -> int:
        """Device bytes a fetch from `tier` leases beside any staging buffer."""
        if tier == "device" or (tier == "host" and self.in_place) or (
                tier == "disk" and self.shared_ram):
            return 0
        return num_bytes


_Release = tuple[str, int] | tuple[str, tuple]  # (tier, bytes) or ("give", staging kind)


def _fetch(ledger: _Ledger, token: _Token, kind: tuple, num_bytes: int, tier: str) -> None:
    """A load from `tier`: a staging buffer (disk; on a CPU it is the lease, given back when
    the lease is released, elsewhere given back once copied over) and the device lease."""
    if tier == "disk":
        ledger.take(kind, num_bytes)
        if not token.shared_ram:
            ledger.give(kind)
    ledger.add("device", token.leased(num_bytes, tier))


def _unfetch(token: _Token, kind: tuple, num_bytes: int, tier: str) -> list[_Release]:
    """The releases of a lease made by `_fetch`."""
    staged: list[_Release] = [("give", kind)] if tier == "disk" and token.shared_ram else []
    return [*staged, ("device", -token.leased(num_bytes, tier))]


def _apply(ledger: _Ledger, releases: list[_Release]) -> None:
    for tier, amount in releases:
        if tier == "give":
            ledger.give(amount)
        else:
            ledger.add(tier, amount)


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
            _weights(ledger, token.weight_loads[layer], load=op == 0)
        elif op == 2:
            _load_cache(ledger, token, layer, batch)
        elif op == 3:
            if (layer - 1, batch) in stored:
                _settle(ledger, pending, ("hidden", layer - 1, batch))
                _fetch_hidden(ledger, token, layer, batch)
            else:
                deferred.add((layer, batch))
        elif op == 4:
            if (layer, batch) in deferred:
                _settle(ledger, pending, ("hidden", layer - 1, batch))
                _fetch_hidden(ledger, token, layer, batch)
            if layer > 0 and token.hidden_tiers[layer - 1][batch] != "device":
                ledger.add(token.hidden_tiers[layer - 1][batch], -token.hidden[batch])
            _compute(ledger, token, layer, batch)
            if pending:
                _tick(ledger, pending)
        else:
            cache = op == 5
            releases = (_store_cache(ledger, token, layer, batch) if cache else
                        _store(ledger, token, token.hidden_tiers[layer][batch],
                               ("hidden", token.hidden[batch]), token.hidden[batch]))
            key = ("cache" if cache else "hidden", layer, batch)
            pending[key] = [lag, releases]
            if not cache:
                stored.add((layer, batch))
            if lag == 0:
                _settle(ledger, pending, key)
    _settle(ledger, pending)


def _weights(ledger: _Ledger, fetch: LayerFetch, load: bool) -> None:
    """LoadWeights / FreeWeights of one layer: its device leases, and its disk tensors'
    staging buffers (on a CPU kept as the leases until the free)."""
    ledger.add("device", fetch.device if load else -fetch.device)
    shared = ledger.staging_tier == "device"
    for kind, num_bytes in fetch.staged:
        if load:
            ledger.take(kind, num_bytes)
        if load != shared:  # a GPU gives it back once copied over; a CPU at the free
            ledger.give(kind)


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
        _apply(ledger, pending.pop(done)[1])


def _load_cache(ledger: _Ledger, token: _Token, layer: int, batch: int) -> None:
    tier, full = token.cache_tiers[layer][batch], token.cache[layer][batch]
    if token.phase == "prefill":
        ledger.add("device", full)  # a fresh buffer, counted at its capacity (it may grow to it)
        if token.prefix is not None:  # the shared prefix, fetched, copied in and released
            _fetch_prefix(ledger, token, *token.prefix[layer])
    elif token.compressed:  # codes fetched, dequantized into a full lease, codes released
        codes = ("codes", token.cache_home[layer][batch])
        _fetch(ledger, token, codes, token.cache_home[layer][batch], tier)
        ledger.add("device", full)
        _apply(ledger, _unfetch(token, codes, token.cache_home[layer][batch], tier))
    else:
        _fetch(ledger, token, ("cache", full), full, tier)
        ledger.add("device", token.remade_bytes(full, tier))


def _fetch_prefix(ledger: _Ledger, token: _Token, tier: str, stored: int, full: int) -> None:
    kind = ("codes" if token.compressed else "cache", stored)
    _fetch(ledger, token, kind, stored, tier)
    if token.compressed:
        ledger.add("device", full)
        ledger.add("device", -full)
    _apply(ledger, _unfetch(token, kind, stored, tier))


def _store_cache(ledger: _Ledger, token: _Token, layer: int, batch: int) -> list[_Release]:
    tier, full = token.cache_tiers[layer][batch], token.cache[layer][batch]
    if token.compressed:  # a new home of 4-bit codes on any tier, or a write-back of them
        codes = token.cache_home[layer][batch]
        if token.phase == "prefill":
            ledger.add(tier, codes)
        releases = _staged_write(ledger, ("codes", codes), codes, tier)
        return [*releases, ("device", -full)]
    if token.phase == "decode":  # written back from its own staging buffer: release the lease
        remade: list[_Release] = [("device", -token.remade_bytes(full, tier))]
        if tier == "host" and token.in_place:
            return remade
        return [*remade, *_unfetch(token, ("cache", full), full, tier)]
    return _store(ledger, token, tier, ("cache", full), full)


def _staged_write(ledger: _Ledger, kind: tuple, num_bytes: int, tier: str) -> list[_Release]:
    """A write to the disk copies through a staging buffer, given back when it is done."""
    if tier != "disk":
        return []
    ledger.take(kind, num_bytes)
    return [("give", kind)]


def _store(ledger: _Ledger, token: _Token, tier: str, kind: tuple, num_bytes: int
           ) -> list[_Release]:
    """A new home: charged now; the device lease is released when the store is done (a disk
    write copies through a staging buffer first). A device lease becomes the home."""
    if tier == "device":
        return []
    ledger.add(tier, num_bytes)
    return [*_staged_write(ledger, kind, num_bytes, tier), ("device", -num_bytes)]


def _fetch_hidden(ledger: _Ledger, token: _Token, layer: int, batch: int) -> None:
    """A hidden-state load: off the device a fetch (a host home on a CPU: its charge moves to
    the lease); a device home's charge moves to the lease. The home off the device is freed
    after the copy, counted at the compute that uses it, since the pool may run the copy late."""
    tier, size = token.hidden_tiers[layer - 1][batch], token.hidden[batch]
    if tier == "host" and token.in_place:
        ledger.add("device", size)
    elif tier != "device":
        _fetch(ledger, token, ("hidden", size), size, tier)


def _release_hidden(ledger: _Ledger, token: _Token, layer: int, batch: int) -> None:
    tier, size = token.hidden_tiers[layer - 1][batch], token.hidden[batch]
    if tier == "device" or (tier == "host" and token.in_place):
        ledger.add("device", -size)
    else:
        _apply(ledger, _unfetch(token, ("hidden", size), size, tier))


def _compute(ledger: _Ledger, token: _Token, layer: int, batch: int) -> None:
    ledger.add("device", token.work[layer][batch])
    ledger.add("device", -token.work[layer][batch])
    if layer > 0:
        _release_hidden(ledger, token, layer, batch)  # the input is released
    if layer < len(token.weight_loads) - 1:
        ledger.add("device", token.hidden[batch])  # the output is adopted


def _token(cfg: ModelConfig, layers: list[LayerSpec], policy: Policy, shape: BlockShape,
           itemsize: int, phase: str, shared_ram: bool, remade: bool = False) -> _Token:
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
        cache=[[cache_entry_bytes(cfg, shape.rows[b], layer.cache_columns(shape.capacity(b)),
                                  itemsize) for b in batches] for layer in layers],
        hidden=[hidden_bytes(cfg, shape.rows[b], new[b], itemsize) for b in batches],
        work=work,
        cache_tiers=entry_tiers(len(layers), len(shape.rows), policy.cache),
        hidden_tiers=entry_tiers(len(layers), len(shape.rows), policy.activations),
        weight_loads=weight_fetches(layers, policy, itemsize, shared_ram),
        cache_home=[[quantized_bytes(cfg, shape.rows[b], layer.cache_columns(shape.capacity(b)),
                                     itemsize) for b in batches] for layer in layers]
        if policy.compress_cache else None,
        in_place=policy.cpu_attention or shared_ram,
        shared_ram=shared_ram,
        remade=remade,
    )


def block_peaks(cfg: ModelConfig, layers: list[LayerSpec], policy: Policy, shape: BlockShape,
                dtype: torch.dtype, shared_ram: bool, lag: int = 1, remade: bool = False
                ) -> dict[str, int]:
    """Predicted `engine.stats.peak_bytes` for generating one block of `shape` (the largest).
    `shared_ram`: the device tier is RAM (a CPU). `lag`: how many computes a store to the host
    or disk may trail (overlap on): 1 is what a quiet machine shows, 2 a bound for planning.
    `remade`: count the copy of a cache used in place that a decode step re-makes (rows done,
    columns grown), as at the step where that happens: part of the bound for planning."""
    itemsize = dtype.itemsize
    lag = lag if policy.overlap else 0  # without overlap every step runs in order
    ledger = _Ledger(weight_home_bytes(layers, policy, itemsize),
                     "device" if shared_ram else "host", spare=1 if lag > 1 else 0)
    has_cache = tuple(layer.kind == "decoder" for layer in layers)
    prefix = None
    if shape.prefix_len:  # the prefix runs first as a one-row block and keeps its caches
        one_row = BlockShape((1,), (shape.prefix_len,), 0)
        token = _token(cfg, layers, policy, one_row, itemsize, "prefill", shared_ram)
        _run_token(ledger, token, _compiled_steps(has_cache, 1, policy.overlap), lag)
        stored = token.cache_home if token.compressed else token.cache
        prefix = [(tiers[0], stored[layer][0], token.cache[layer][0])
                  for layer, tiers in enumerate(token.cache_tiers)]
        ledger.trim()
    steps = _compiled_steps(has_cache, len(shape.rows), policy.overlap)
    phases = ("prefill", "decode") if shape.gen_len > 1 else ("prefill",)
    for phase in phases:
        token = _token(cfg, layers, policy, shape, itemsize, phase, shared_ram, remade)
        token.prefix = prefix
        _run_token(ledger, token, steps, lag)
    return {tier: ledger.peak[tier] for tier in TIERS}
