"""Stages started by a launcher (`torchrun`, several machines with `--nnodes`): every process
runs the caller's script, so each one builds its own stage in-process and joins the
launcher's process group, and every rank calls `generate` / `score` with the same arguments
and gets the same answer (the last stage's, broadcast).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from engine.config import ModelConfig
from engine.distributed.links import StageLinks
from engine.distributed.split import stage_slices
from engine.distributed.stage import StageEngine
from engine.distributed.stats import PipelineStats
from engine.model import layer_specs

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process was started by a launcher that set up a process group's env."""
    return all(name in os.environ for name in LAUNCHER_VARS)


def _join(stages: int, device: torch.device, timeout_s: float) -> tuple[bool, Any]:
    """Join (or reuse) the launcher's group; (whether we created it, the gloo control group)."""
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    if dist.get_world_size() != stages:
        raise ValueError(f"stages={stages}, but the launcher started {dist.get_world_size()} "
                         f"processes; give stages equal to the number of processes")
    control = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return created, control


class LaunchedStage:
    """This process's stage of a launcher's group, behind the `Engine` API."""

    def __init__(self, engine: StageEngine, created_group: bool) -> None:
        self.stage, self._created_group = engine, created_group
        self.config, self.policy = engine.config, engine.policy

    @classmethod
    def join(cls, model_dir: str | Path, stages: int, device=None, timeout_s: float = 600.0,
             **options) -> LaunchedStage:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device is None and torch.cuda.is_available():
            device = f"cuda:{local_rank % torch.cuda.device_count()}"
        device = torch.device(device or "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL works on the current device
        created, control = _join(stages, device, timeout_s)
        part = stage_slices(layer_specs(ModelConfig.from_pretrained(model_dir)), stages)[
            dist.get_rank()]
        wire = device if dist.get_backend() == "nccl" else None
        links = StageLinks(part, timeout_s, control_group=control, wire_device=wire)
        share = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # stages on this machine
        engine = StageEngine.load(model_dir, part, links, device=device, share=share, **options)
        return cls(engine, created)

    def _shared(self, value: Any) -> Any:
        box = [value if self.stage.part.last else None]
        dist.broadcast_object_list(box, src=self.stage.part.stages - 1,
                                   group=self.stage.links.control_group)
        return box[0]

    def generate(self, prompts, params=None, prefix=None) -> list[list[int]]:
        return self._shared(self.stage.generate(prompts, params, prefix))

    def score(self, prompts, candidates, prefix=None) -> list[list[float]]:
        return self._shared(self.stage.score(prompts, candidates, prefix))

    @property
    def stats(self) -> PipelineStats:
        """Gathered from every stage (a collective: every rank must ask)."""
        stages: list = [None] * self.stage.part.stages
        dist.all_gather_object(stages, self.stage.stage_stats(),
                               group=self.stage.links.control_group)
        mine = self.stage.stats
        return PipelineStats.gather(stages, mine.total_s, mine.prompt_tokens,
                                    mine.generated_tokens)

    @property
    def closed(self) -> bool:
        return self.stage.closed

    def close(self) -> None:
        if self.stage.closed:
            return
        self.stage.close()
        if self._created_group:
            dist.destroy_process_group()

    def __enter__(self) -> LaunchedStage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
