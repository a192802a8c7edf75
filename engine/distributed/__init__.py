"""Pipeline-parallel stages over torch.distributed: the model's layers cut into N slices, one
process per stage, the block schedule run over each slice, hidden states sent stage to stage.

The one boundary: the layer math, the tiers and the executor know nothing of stages.
`staged_engine` is what `Engine.from_pretrained(..., stages=N)` returns.

Limits, as they are: SamplingParams go to the last stage's process, so a logits processor must
pickle (fw.extract's grammar processor pickles as xgrammar's JSON); a call
interrupted in the caller (Ctrl-C) cannot be taken back mid-schedule, so it stops the stages
and closes the engine; several stages on one GPU talk over gloo through host memory, and the
NCCL path (a GPU per stage) has not been run on GPUs yet.
"""

from __future__ import annotations

from pathlib import Path

from engine.distributed.driver import StagedEngine, StageError
from engine.distributed.launched import LaunchedStage, launched
from engine.distributed.links import StageLinkError
from engine.distributed.split import StageSlice, stage_slices
from engine.distributed.stats import PipelineStats

__all__ = ["LaunchedStage", "PipelineStats", "StageError", "StageLinkError", "StageSlice", "StagedEngine",
           "stage_slices", "staged_engine"]


def staged_engine(model_dir: str | Path, stages: int, **options) -> StagedEngine | LaunchedStage:
    """Under a launcher (`torchrun`): this process's stage of its group. Otherwise N stage
    processes started here (see `StagedEngine.spawn` for `options`)."""
    if launched():
        return LaunchedStage.join(model_dir, stages, **options)
    return StagedEngine.spawn(model_dir, stages, **options)
