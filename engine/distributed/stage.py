"""`StageEngine`: one pipeline stage, the `Engine` over its slice of the layers.

Every stage runs the same `generate` / `score` on the same prompts (collectively): the same
blocks and GPU batches, each stage computing its own layers of every batch. A block's GPU
batches are cut into as many groups as there are stages (FlexGen's inner iterations), and each
pass runs one group's token, so that stage r computes group g while stage r + 1 computes group
g - 1. After the last stage's head has run a group, it sends the group's transitions (sampled
ids, finished rows) to every other stage, which replay them before the group's next token.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from engine.checkpoint import CheckpointReader
from engine.config import ModelConfig
from engine.consumers import Scorer
from engine.defaults import resolve_device, resolve_dtype
from engine.distributed.links import StageLinks
from engine.distributed.planning import stage_budgets, stage_policy
from engine.distributed.split import StageSlice, stage_layers
from engine.distributed.stage_runner import ReplayBatch, StageRunner
from engine.engine import Engine, _check_fits
from engine.model import layer_specs
from engine.policy.workload import Workload
from engine.schedule.executor import Executor
from engine.storage import Ledger, Tiers
from engine.weights import place_weights


def pass_groups(num_batches: int, stages: int) -> list[list[int]]:
    """GPU batch indices cut into min(stages, num_batches) contiguous groups."""
    count = min(stages, num_batches)
    share, extra = divmod(num_batches, count)
    groups, start = [], 0
    for group_idx in range(count):
        stop = start + share + (1 if group_idx < extra else 0)
        groups.append(list(range(start, stop)))
        start = stop
    return groups


class StageEngine(Engine):
    def __init__(self, cfg: ModelConfig, policy, tiers: Tiers, weights: list,
                 dtype: torch.dtype, layers: list, part: StageSlice, links: StageLinks) -> None:
        super().__init__(cfg, policy, tiers, weights, dtype, layers)
        self.part, self.links = part, links
        self.boundary_s = 0.0

    @classmethod
    def load(cls, model_dir: str | Path, part: StageSlice, links: StageLinks, policy=None,
             device=None, dtype=None, offload_dir=None, memory=None, progress: bool = False,
             allow_compression: bool = False, share: int = 1,
             workload: Workload | None = None) -> StageEngine:
        """Read and place only this stage's layers. `share`: how many stages share this
        machine's free memory when `memory` leaves a tier's budget out; `workload`: what
        policy="auto" plans for (the engine's nominal workload when None)."""
        cfg = ModelConfig.from_pretrained(model_dir)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, cfg, device)
        budgets = stage_budgets(device, offload_dir, memory, share)
        every = layer_specs(cfg)
        owned = every[part.start : part.stop]
        policy = stage_policy(cfg, owned, policy, dtype, budgets, device, offload_dir,
                              allow_compression, links.control_group, workload)
        _check_fits(cfg, owned, policy, dtype, budgets, shared_ram=device.type == "cpu")
        tiers = Tiers(Ledger(budgets), device, offload_dir)
        try:
            with CheckpointReader(model_dir) as reader:
                placed = place_weights(reader, owned, policy.weights, dtype, tiers,
                                       policy.compress_weights, progress)
        except BaseException:
            tiers.close()
            raise
        weights = ([] if part.first else [{}]) + placed + ([] if part.last else [{}])
        tiers.staging.trim()  # the write buffers of construction are not needed again
        tiers.ledger.reset_peaks()
        return cls(cfg, policy, tiers, weights, dtype, stage_layers(every, part), part, links)

    def score(self, prompts: list[list[int]], candidates: list[list[int]],
              prefix: list[int] | None = None) -> list[list[float]]:
        """On the last stage, the scores; the others run the same schedule and return
        placeholders (the scores are computed at the head)."""
        if self.part.last:
            return super().score(prompts, candidates, prefix)
        return self._run(prompts, Scorer(candidates), prefix, lambda batch: batch.outputs)

    # the block's parts ---------------------------------------------------------------------
    def _new_batch(self, row_ids, prompts, extra_cols, prefix_len) -> ReplayBatch:
        return ReplayBatch.from_prompts(row_ids, prompts, extra_cols, prefix_len)

    def _new_runner(self, batches, consumer, prefix_cache) -> StageRunner:
        return StageRunner(self.config, self._layers, self._weights, self.policy, self._tiers,
                           self.dtype, batches, consumer, prefix_cache, links=self.links)

    def _run_tokens(self, executor: Executor, steps: list, batches: list) -> None:
        """Passes over the groups until every row is done (see the module's docstring)."""
        groups = pass_groups(len(batches), self.part.stages)
        was_active = [True] * len(groups)
        first_pass = True
        try:
            while True:
                for group_idx, group in enumerate(groups):
                    if not first_pass and not self.part.last and was_active[group_idx]:
                        self._replay(batches)
                    active = {idx for idx in group if batches[idx].active}
                    was_active[group_idx] = bool(active)
                    if active:
                        executor.runner.group = sorted(active)
                        executor.run(steps, active)
                    if self.part.last and active:
                        self._publish(batches, active)
                first_pass = False
                self._tiers.staging.drop_unused()  # as Engine._run_tokens, once per pass
                if not any(batch.active for batch in batches):
                    break
            self.links.settle()
        finally:
            self.boundary_s += executor.runner.boundary_s

    def _publish(self, batches: list[ReplayBatch], active: set[int]) -> None:
        message = {idx: batches[idx].take_transitions() for idx in sorted(active)}
        for rank in range(self.part.stages - 1):
            self.links.send_object(message, rank)

    def _replay(self, batches: list[ReplayBatch]) -> None:
        message = self.links.recv_object(self.part.stages - 1, "the sampled tokens")
        for idx, transitions in message.items():
            batches[idx].replay(transitions)

    def _abandon(self, executor, batches, runner, device_before) -> None:
        self.links.abandon()
        with contextlib.suppress(Exception):
            runner.release_posted()
        super()._abandon(executor, batches, runner, device_before)

    # stats ---------------------------------------------------------------------------------
    def stage_stats(self) -> dict:
        """This stage's measurements; compute excludes the time boundary layers waited."""
        stats = self.stats.as_dict()
        stats["compute_s"] = max(0.0, stats["compute_s"] - self.boundary_s)
        stats["comm_s"] = self.links.wait_s
        stats["bytes_moved"] = {**stats["bytes_moved"], **self.links.bytes_sent}
        stats["budgets"] = dict(self._tiers.ledger.budgets)
        stats["layers"] = (self.part.start, self.part.stop)
        stats["stage"] = self.part.rank
        return stats
