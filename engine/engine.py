"""`Engine`: a model placed on the tiers, generating for many prompts with the block schedule."""

from __future__ import annotations

import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from engine.batch import GpuBatch
from engine.checkpoint import CheckpointReader
from engine.config import ModelConfig
from engine.defaults import default_budgets, default_policy, resolve_device, resolve_dtype
from engine.model import layer_specs
from engine.policy.memory import minimum_bytes
from engine.policy.policy import TIERS, Policy
from engine.runner import BlockRunner
from engine.sampling import SamplingParams
from engine.schedule import token_steps
from engine.schedule.executor import Executor
from engine.stats import EngineStats
from engine.storage import Ledger, MemoryBudgetError, Tiers
from engine.storage.ledger import format_bytes
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
        self, cfg: ModelConfig, policy: Policy, tiers: Tiers, weights: list, dtype: torch.dtype
    ) -> None:
        self.config, self.policy, self.dtype, self._tiers = cfg, policy, dtype, tiers
        self._layers = layer_specs(cfg)
        self._weights = weights
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="flexgen-io") if policy.overlap else None
        self._finalizer = weakref.finalize(self, _shutdown, tiers, self._pool)
        self.stats = EngineStats()
        self.stats.peak_bytes.update(tiers.ledger.peak)

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, policy: Policy | str | None = None,
        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
        offload_dir: str | Path | None = None, memory: dict[str, str | int] | None = None,
        progress: bool = False,
    ) -> Engine:
        cfg = ModelConfig.from_pretrained(model_dir)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, cfg, device)
        budgets = default_budgets(device, offload_dir, memory)
        layers = layer_specs(cfg)
        if policy is None or policy == "auto":
            policy = default_policy(cfg, layers, dtype, budgets)
        elif not isinstance(policy, Policy):
            raise TypeError(f"policy must be None, 'auto' or a Policy, got {policy!r}")
        _check_fits(cfg, layers, policy, dtype, budgets)
        tiers = Tiers(Ledger(budgets), device, offload_dir)
        try:
            with CheckpointReader(model_dir) as reader:
                weights = place_weights(reader, layers, policy.weights, dtype, tiers, progress)
        except BaseException:
            tiers.close()
            raise
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

    # generation --------------------------------------------------------------------------
    def generate(
        self, prompts: list[list[int]], params: SamplingParams | None = None
    ) -> list[list[int]]:
        """Generated ids for each prompt, in input order (ending with the stop id, if any)."""
        if self.closed:
            raise RuntimeError("this Engine is closed")
        params = params or SamplingParams()
        validate_prompts(prompts, self.config, params.max_new_tokens)
        if not prompts:
            return []
        order = sorted(range(len(prompts)), key=lambda row: -len(prompts[row]))
        outputs: dict[int, list[int]] = {}
        begin = time.perf_counter()
        block = self.policy.block_size
        for start in range(0, len(order), block):
            outputs.update(self._generate_block(order[start : start + block], prompts, params))
        self.stats.total_s += time.perf_counter() - begin
        self.stats.prompt_tokens += sum(len(prompt) for prompt in prompts)
        self.stats.generated_tokens += sum(len(out) for out in outputs.values())
        return [outputs[row] for row in range(len(prompts))]

    def _generate_block(
        self, rows: list[int], prompts: list[list[int]], params: SamplingParams
    ) -> dict[int, list[int]]:
        batch_size = self.policy.gpu_batch_size
        batches = [
            GpuBatch.from_prompts(
                rows[at : at + batch_size], [prompts[row] for row in rows[at : at + batch_size]],
                params.max_new_tokens,
            )
            for at in range(0, len(rows), batch_size)
        ]
        runner = BlockRunner(
            self.config, self._layers, self._weights, self.policy, self._tiers, self.dtype,
            batches, params, self._stop_ids(params), _generator(params),
        )
        executor = Executor(runner, self._pool)
        steps = token_steps([layer.kind == "decoder" for layer in self._layers],
                            len(batches), self.policy.overlap)
        try:
            with torch.inference_mode():
                while active := {idx for idx, batch in enumerate(batches) if batch.active}:
                    executor.run(steps, active)
        finally:
            executor.drain()
            self._free_block(batches, runner)
            self.stats.add_run(executor, self._tiers.ledger)
        return {row: out for batch in batches for row, out in batch.outputs.items()}

    def _free_block(self, batches: list[GpuBatch], runner: BlockRunner) -> None:
        for batch in batches:
            for entry in batch.caches.values():
                self._tiers.free(entry.placed)
            batch.caches.clear()
        for placed in runner.hidden.values():
            self._tiers.free(placed)
        runner.hidden.clear()

    def _stop_ids(self, params: SamplingParams) -> set[int]:
        if params.stop_ids is not None:
            return set(params.stop_ids)
        return set() if params.ignore_eos else set(self.config.eos_token_ids)


def _generator(params: SamplingParams) -> torch.Generator | None:
    return None if params.seed is None else torch.Generator().manual_seed(params.seed)


def _check_fits(cfg, layers, policy: Policy, dtype: torch.dtype, budgets: dict[str, int]) -> None:
    needs = minimum_bytes(cfg, layers, policy, dtype)
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
