"""The model side of the block schedule: what each step loads, stores and computes.

`BlockRunner` implements the executor's `Runner` for one block of GPU batches. Homes of caches
and hidden states are chosen per (layer, batch) entry so that the policy's percentages hold
over the block; weights were homed once at engine construction.
"""

from __future__ import annotations

import torch

from engine.batch import CacheEntry, GpuBatch, grown_columns
from engine.config import ModelConfig
from engine.consumers import PrefixCapture, Sampler, Scorer
from engine.model import LayerSpec, kernels, math
from engine.model.chunks import decoder_in_chunks
from engine.model.workspace import workspace_bytes
from engine.policy.policy import Policy
from engine.storage import Lease, Placed, Tiers
from engine.weights import LayerWeights, choose_tiers

Consumer = Sampler | Scorer | PrefixCapture


class BlockRunner:
    def __init__(
        self, cfg: ModelConfig, layers: list[LayerSpec], weights: list[LayerWeights],
        policy: Policy, tiers: Tiers, dtype: torch.dtype, batches: list[GpuBatch],
        consumer: Consumer, prefix: dict[int, Placed] | None = None,
    ) -> None:
        self.cfg, self.layers, self.weights, self.tiers = cfg, layers, weights, tiers
        self.dtype, self.batches, self.consumer = dtype, batches, consumer
        self.prefix = prefix or {}  # layer -> shared prefix cache [2, 1, K, P, D]
        self.compress_cache = policy.compress_cache
        self.cpu_attention = policy.cpu_attention
        entries = len(layers) * len(batches)
        self.cache_tiers = choose_tiers([1] * entries, policy.cache)  # layer-major
        self.hidden_tiers = choose_tiers([1] * entries, policy.activations)
        self.hidden: dict[tuple[int, int], Placed] = {}
        self.fresh_versions: dict[tuple[int, int], int] = {}  # prefill caches not yet stored
        self.pack_weights = kernels.packing_supported(tiers.device, dtype)

    def _entry(self, layer: int, batch: int) -> int:
        return layer * len(self.batches) + batch

    # weights ---------------------------------------------------------------------------
    def load_weights(self, layer: int) -> dict[str, Lease]:
        if self.pack_weights:  # homes used in place: packed once for oneDNN (model.kernels)
            kernels.pack_homes({name: placed for name, placed in self.weights[layer].items()
                                if self.tiers.in_place(placed.tier)})
        return {
            name: self.tiers.fetch(placed, f"layer {layer} weight {name}")
            for name, placed in self.weights[layer].items()
        }

    def free_weights(self, layer: int, weights: dict[str, Lease]) -> None:
        for lease in weights.values():
            self.tiers.release(lease)

    # KV cache --------------------------------------------------------------------------
    def load_cache(self, layer: int, batch_idx: int) -> Lease:
        batch = self.batches[batch_idx]
        entry = batch.caches.get(layer)
        needed = batch.start + batch.ids.shape[1]  # columns written once this step has run
        if entry is None:  # prefill: a fresh buffer, with room for the first new tokens
            columns = self._columns(layer, batch, needed)
            shape = (2, len(batch.row_ids), self.cfg.num_kv_heads, columns, self.cfg.head_dim)
            lease = self.tiers.empty(shape, self.dtype, f"KV cache of layer {layer}")
            # the rows it is computed for: the head may re-select them (scoring) before the
            # store, which runs on the I/O pool, gets to record them
            self.fresh_versions[layer, batch_idx] = len(batch.keeps)
            if layer in self.prefix:
                self._copy_prefix(self.prefix[layer], lease.tensor)
            return lease
        if self._attend_at_home(entry.placed):
            lease = Lease(entry.placed.tensor, 0)  # used in place, where it lives
        else:
            lease = self.tiers.fetch(entry.placed, f"KV cache of layer {layer}")
        columns = self._columns(layer, batch, needed, current=lease.tensor.shape[3])
        if entry.version < len(batch.keeps) or columns != lease.tensor.shape[3]:
            # rows finished since this cache was stored, or it needs more columns
            tensor = batch.catch_up(entry, lease.tensor, columns)
            self.tiers.release(lease)
            lease = self.tiers.adopt(tensor, f"KV cache of layer {layer}")
        return lease

    def _columns(self, layer: int, batch: GpuBatch, needed: int, current: int = 0) -> int:
        """KV columns of `layer`'s cache for `batch`: a sliding window's ring has its fixed
        size; other caches grow with the rows' outputs (`engine.batch.grown_columns`)."""
        full = self.layers[layer].cache_columns(batch.capacity)
        return full if full != batch.capacity else grown_columns(needed, full, current)

    def _attend_at_home(self, placed: Placed) -> bool:
        """cpu_attention: a host-resident cache is attended to on the host, not copied over;
        only new q/k/v and the attention output cross the link."""
        return self.cpu_attention and placed.tier == "host" and placed.quant is None

    def _copy_prefix(self, placed: Placed, cache: torch.Tensor) -> None:
        """cache [2, B, K, S_cap, D] <- the shared prefix [2, 1, K, P, D] in columns :P."""
        prefix = self.tiers.fetch(placed, "shared prefix cache")
        cache[:, :, :, : placed.logical_shape[3]] = prefix.tensor
        self.tiers.release(prefix)

    def store_cache(self, layer: int, batch_idx: int, lease: Lease) -> None:
        batch = self.batches[batch_idx]
        entry = batch.caches.get(layer)
        what = f"KV cache of layer {layer}"
        if entry is None:
            tier = self.cache_tiers[self._entry(layer, batch_idx)]
            entry = CacheEntry(self.tiers.hand_over(tier, lease, what, self.compress_cache),
                               version=self.fresh_versions.pop((layer, batch_idx)))
            batch.caches[layer] = entry
            return
        self.tiers.write_back(entry.placed, lease, what)
        self.tiers.release(lease)

    # hidden states ---------------------------------------------------------------------
    def load_hidden(self, layer: int, batch_idx: int) -> Lease:
        placed = self.hidden.pop((layer - 1, batch_idx))
        return self.tiers.take(placed, f"hidden state after layer {layer - 1}")

    def store_hidden(self, layer: int, batch_idx: int, lease: Lease) -> None:
        tier = self.hidden_tiers[self._entry(layer, batch_idx)]
        self.hidden[layer, batch_idx] = self.tiers.hand_over(tier, lease,
                                                             f"hidden state after layer {layer}")

    # compute ---------------------------------------------------------------------------
    def compute(
        self, layer: int, batch_idx: int, weights: dict[str, Lease], cache: Lease | None,
        hidden: Lease | None,
    ) -> Lease | None:
        batch, spec = self.batches[batch_idx], self.layers[layer]
        w = {name: lease.tensor for name, lease in weights.items()}
        step = batch.inputs(self.cfg.sliding_window)
        rows, new_tokens = batch.ids.shape
        work = workspace_bytes(self.cfg, spec.kind, rows, new_tokens, step.start + new_tokens,
                               self.dtype.itemsize)
        self.tiers.ledger.allocate("device", work, f"layer {layer} compute workspace")
        try:
            if spec.kind == "embed":
                out = math.embed(self.cfg, w, batch.ids.to(self.tiers.device), step)
            elif spec.kind == "decoder":
                kv = (cache.tensor[0], cache.tensor[1])
                x = hidden.tensor  # consumed by a chunked prefill: ours, unless pooled
                if hidden.staging is not None:  # a disk read's buffer, given back on release
                    x = x.clone()
                out = decoder_in_chunks(self.cfg, w, x, kv, step, spec)
            else:
                self.consumer.consume(batch, hidden.tensor, lambda x: math.head(self.cfg, w, x))
                out = None
        finally:
            self.tiers.ledger.free("device", work)
        if hidden is not None:
            self.tiers.release(hidden)
        return None if out is None else self.tiers.adopt(out, f"hidden state after layer {layer}")
