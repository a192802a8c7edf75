"""The block schedule as data (`steps`) and the executor that runs it with overlapped I/O."""

from engine.schedule.steps import (
    Compute,
    FreeWeights,
    LoadCache,
    LoadHidden,
    LoadWeights,
    Step,
    StoreCache,
    StoreHidden,
    token_steps,
)

__all__ = [
    "Compute", "FreeWeights", "LoadCache", "LoadHidden", "LoadWeights", "Step", "StoreCache",
    "StoreHidden", "token_steps",
]
