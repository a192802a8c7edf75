"""`Engine`: a model placed on the tiers, generating for many prompts with the block schedule."""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from engine.batch import GpuBatch, cut_batches
from engine.checkpoint import CheckpointReader
from engine.config import ModelConfig
from engine.consumers import PrefixCapture, Sampler, Scorer
from engine.defaults import default_budgets, default_policy, resolve_device, resolve_dtype
from engine.interrupts import deferred_interrupts
from engine.model import LayerSpec, layer_specs
from engine.native_memory import return_freed_memory
from engine.policy.memory import minimum_bytes
from engine.policy.policy import TIERS, Policy
from engine.policy.workload import Workload
from engine.runner import BlockRunner, Consumer
from engine.sampling import SamplingParams
from engine.schedule import token_steps
from engine.schedule.executor import Executor
from engine.stats import EngineStats
from engine.storage import Lease, Ledger, MemoryBudgetError, Placed, Tiers
from engine.storage.ledger import format_bytes
from engine.storage.tiers import TierState
from engine.validation import validate_prompts
from engine.weights import place_weights

logger = logging.getLogger(__name__)


def _shutdown(tiers: Tiers, pool: ThreadPoolExecutor | None) -> None:
    if pool is not None:
        pool.shutdown(wait=True)
    tiers.close()


class Engine:
    """Use `Engine.from_pretrained`; close with `close()` or a `with` block."""

    def __init__(
        self, cfg: ModelConfig, policy: Policy, tiers: Tiers, weights: list, dtype: torch.dtype,
        layers: list[LayerSpec] | None = None,
    ) -> None:
        """`layers`: the layers `weights` belong to (all of the model's when None)."""
        self.config, self.policy, self.dtype, self._tiers = cfg, policy, dtype, tiers
        self._layers = layer_specs(cfg) if layers is None else layers
        self._weights = weights
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="flexgen-io") if policy.overlap else None
        self._finalizer = weakref.finalize(self, _shutdown, tiers, self._pool)
        self._lock = threading.Lock()  # one call at a time: tiers, I/O pool, ledger are shared
        self.stats = EngineStats()
        self.stats.peak_bytes.update(tiers.ledger.peak)

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, policy: Policy | str | None = None,
        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
        offload_dir: str | Path | None = None, memory: dict[str, str | int] | None = None,
        progress: bool = False, allow_compression: bool = False, stages: int | None = None,
        workload: Workload | None = None,
    ) -> Engine:
        """`policy` None / "auto": planned for `workload` (default: a nominal one) on this
        machine's measured profile; 4-bit weights / KV cache (outputs change) only with
        `allow_compression`.
        `stages` N > 1: the layers cut into N pipeline stages, one process each
        (`engine.distributed`); `policy` applies to, and `memory` budgets each, every stage."""
        if stages is not None and stages != 1:
            from engine.distributed import staged_engine  # its processes import this module

            return staged_engine(model_dir, stages, policy=policy, device=device, dtype=dtype,
                                 offload_dir=offload_dir, memory=memory, progress=progress,
                                 allow_compression=allow_compression, workload=workload)
        cfg = ModelConfig.from_pretrained(model_dir)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, cfg, device)
        budgets = default_budgets(device, offload_dir, memory)
        layers = layer_specs(cfg)
        if policy is None or policy == "auto":
            policy = default_policy(cfg, layers, dtype, budgets, device, offload_dir,
                                    allow_compression, workload)
        elif not isinstance(policy, Policy):
            raise TypeError(f"policy must be None, 'auto' or a Policy, got {policy!r}")
        _check_fits(cfg, layers, policy, dtype, budgets, shared_ram=device.type == "cpu")
        tiers = Tiers(Ledger(budgets), device, offload_dir)
        try:
            with CheckpointReader(model_dir) as reader:
                weights = place_weights(
                    reader, layers, policy.weights, dtype, tiers, policy.compress_weights, progress
                )
        except BaseException as err:
            tiers.close()
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                disk = minimum_bytes(cfg, layers, policy, dtype, device.type == "cpu")["disk"]
                raise OSError(err.errno, f"{err.strerror}; this policy keeps "
                              f"{format_bytes(disk)} of weights on the disk tier") from err
            raise
        tiers.staging.trim()  # the write buffers of construction are not needed again
        tiers.ledger.reset_peaks()
        return cls(cfg, policy, tiers, weights, dtype)

    # lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def offload_dir(self) -> Path:
        return self._tiers.offload_dir

    # generation ----------------------------------------------------------------------------
    def generate(
        self, prompts: list[list[int]], params: SamplingParams | None = None,
        prefix: list[int] | None = None,
    ) -> list[list[int]]:
        """Generated ids for each prompt (after the shared `prefix`, if any), in input order,
        ending with the stop id when one was produced."""
        params = params or SamplingParams()
        consumer = Sampler(params, self._stop_ids(params), _generator(params))
        return self._run(prompts, consumer, prefix, lambda batch: batch.outputs)

    def score(
        self, prompts: list[list[int]], candidates: list[list[int]],
        prefix: list[int] | None = None,
    ) -> list[list[float]]:
        """Total natural-log probability of each candidate continuation after each prompt
        (rows x candidates). Each prompt is computed once, whatever the number of candidates."""
        if not candidates or any(len(candidate) == 0 for candidate in candidates):
            raise ValueError("candidates must be a non-empty list of non-empty token-id lists")
        validate_prompts(candidates, self.config, 0, what="candidate")
        consumer = Scorer(candidates)
        return self._run(prompts, consumer, prefix, lambda batch: {})

    def _run(self, prompts, consumer, prefix, results) -> list:
        with self._lock:  # calls from several threads (DuckDB's workers) take turns
            return self._run_locked(prompts, consumer, prefix, results)

    def _run_locked(self, prompts, consumer, prefix, results) -> list:
        if self.closed:
            raise RuntimeError("this Engine is closed")
        prefix = list(prefix or [])
        validate_prompts(prompts, self.config, consumer.extra_cols() + len(prefix))
        if prefix:
            validate_prompts([prefix], self.config, 0, what="prefix")
        if not prompts:
            return []
        begin = time.perf_counter()
        before = self._tiers.snapshot()
        try:
            prefix_cache = self._prefix_cache(prefix) if prefix else {}
            order = sorted(range(len(prompts)), key=lambda row: -len(prompts[row]))
            outputs: dict[int, list] = {}
            block = self.policy.block_size
            for start in range(0, len(order), block):
                rows = order[start : start + block]
                batches = self._run_block(rows, prompts, consumer, prefix_cache, len(prefix))
                for batch in batches:
                    outputs.update(results(batch))
            for placed in prefix_cache.values():
                self._tiers.free(placed)
        except BaseException:  # the prefix's homes too, wherever the call was cut
            with deferred_interrupts():
                self._tiers.restore(before)
            raise
        outputs.update(getattr(consumer, "scores", {}))
        self.stats.total_s += time.perf_counter() - begin
        self.stats.prompt_tokens += sum(len(prompt) for prompt in prompts) + len(prefix)
        if isinstance(consumer, Sampler):
            self.stats.generated_tokens += sum(len(out) for out in outputs.values())
        return [outputs[row] for row in range(len(prompts))]

    def use_policy(self, policy: Policy) -> None:
        """Run later calls under `policy`: its block shape, cache and activation placement,
        attention site and cache compression, which each call sets up anew. The weights stay
        where they were loaded, so `policy.same_weights(self.policy)` must hold."""
        if not policy.same_weights(self.policy):
            raise ValueError(f"{policy!r} places the weights (or overlaps I/O) differently from "
                             f"this engine's {self.policy!r}: build a new engine for it")
        with self._lock:
            self.policy = policy

    def _prefix_cache(self, prefix: list[int]) -> dict[int, Placed]:
        """Run the shared prefix once, as a one-row block; keep its KV cache per layer."""
        (batch,) = self._run_block([0], [prefix], PrefixCapture(), {}, 0, keep_caches=True)
        return {layer: entry.placed for layer, entry in batch.caches.items()}

    def _run_block(
        self, rows: list[int], prompts: list[list[int]], consumer: Consumer,
        prefix_cache: dict[int, Placed], prefix_len: int, keep_caches: bool = False,
    ) -> list[GpuBatch]:
        lengths = [len(prompts[row]) for row in rows]
        batches = [
            self._new_batch(part, [prompts[row] for row in part], consumer.extra_cols(),
                            prefix_len)
            for part in cut_batches(rows, lengths, self.policy.gpu_batch_size)
        ]
        runner = self._new_runner(batches, consumer, prefix_cache)
        executor = Executor(runner, self._pool)
        steps = token_steps([layer.kind == "decoder" for layer in self._layers],
                            len(batches), self.policy.overlap)
        before = self._tiers.snapshot()
        try:
            with torch.inference_mode():
                self._run_tokens(executor, steps, batches)
            executor.drain()
            self._free_block(batches, runner, keep_caches)
        except BaseException:  # a failure, or Ctrl-C (also while the block is being freed)
            with deferred_interrupts():  # a second Ctrl-C waits until the block is cleaned up
                self._abandon(executor, batches, runner, before)
            raise
        self._tiers.staging.trim()
        return_freed_memory()  # what malloc kept of the block's temporaries (native_memory)
        self.stats.add_run(executor, self._tiers.ledger)
        return batches

    # the block's parts, which pipeline stages (engine.distributed) replace -----------------
    def _new_batch(self, row_ids: list[int], prompts: list[list[int]], extra_cols: int,
                   prefix_len: int) -> GpuBatch:
        return GpuBatch.from_prompts(row_ids, prompts, extra_cols, prefix_len)

    def _new_runner(self, batches: list[GpuBatch], consumer: Consumer,
                    prefix_cache: dict[int, Placed]) -> BlockRunner:
        return BlockRunner(self.config, self._layers, self._weights, self.policy, self._tiers,
                           self.dtype, batches, consumer, prefix_cache)

    def _run_tokens(self, executor: Executor, steps: list, batches: list[GpuBatch]) -> None:
        """One token of every active GPU batch per pass, until every row is done."""
        while active := {idx for idx, batch in enumerate(batches) if batch.active}:
            executor.run(steps, active)
            self._tiers.staging.drop_unused()  # kinds of shapes the caches have left behind

    def _abandon(self, executor: Executor, batches: list[GpuBatch], runner: BlockRunner,
                 before: TierState) -> None:
        """A failed or interrupted block: cancel its pending I/O and wait for the running
        (no thread touches the tiers after this), release what was loaded, free its homes,
        and put the tiers back as they were before the block: its files removed and the
        charges of the working buffers it held dropped (they die with the block), including
        those of homes the interrupt caught before they were recorded."""
        for loaded in executor.cancel():
            for lease in loaded.values() if isinstance(loaded, dict) else [loaded]:
                if isinstance(lease, Lease):
                    self._tiers.release(lease)
        with contextlib.suppress(Exception):
            self._free_block(batches, runner, keep_caches=False)
        self._tiers.staging.forget_lent()
        self._tiers.staging.trim()
        self._tiers.restore(before)

    def _free_block(self, batches: list[GpuBatch], runner: BlockRunner, keep_caches: bool) -> None:
        for placed in runner.hidden.values():
            self._tiers.free(placed)
        runner.hidden.clear()
        if keep_caches:
            return
        for batch in batches:
            for entry in batch.caches.values():
                self._tiers.free(entry.placed)
            batch.caches.clear()

    def _stop_ids(self, params: SamplingParams) -> set[int]:
        if params.stop_ids is not None:
            return set(params.stop_ids)
        return set() if params.ignore_eos else set(self.config.eos_token_ids)


def _generator(params: SamplingParams) -> torch.Generator | None:
    return None if params.seed is None else torch.Generator().manual_seed(params.seed)


def _check_fits(cfg, layers, policy: Policy, dtype: torch.dtype, budgets: dict[str, int],
                shared_ram: bool) -> None:
    needs = minimum_bytes(cfg, layers, policy, dtype, shared_ram)
    short = [tier for tier in TIERS if needs[tier] > budgets[tier]]
    if short:
        detail = "; ".join(
            f"{tier} needs at least {format_bytes(needs[tier])}, budget {format_bytes(budgets[tier])}"
            for tier in short
        )
        raise MemoryBudgetError(
            f"the policy cannot run even one row: {detail}. Raise the budget, or move weights "
            f"off the {short[0]} tier (Placement percentages), or let policy='auto' choose."
        )
