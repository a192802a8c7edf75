"""Which layers each pipeline stage owns, and the layer list a stage's block schedule runs.

The model's layers (`embed`, `decoder` x N, `head`) are cut into contiguous slices balanced by
compute: the embedding goes with the first stage, the head with the last. A stage's schedule
runs its own layers between two boundary layers: `recv` (first, on every stage but the first:
the hidden state arrives from the stage before) and `send` (last, on every stage but the last:
the hidden state leaves for the next). The block schedule treats them as it treats the
embedding and the head (no input / no stored output), so neither the steps nor the executor
know about stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from math import prod

from engine.model import LayerSpec

RECV, SEND = "recv", "send"


@dataclass(frozen=True)
class StageSlice:
    rank: int
    stages: int
    start: int  # first owned layer, as an index into the model's full layer list
    stop: int  # one past the last owned layer

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.stages - 1

    def describe(self) -> str:
        return f"stage {self.rank} of {self.stages} (layers {self.start}-{self.stop - 1})"


def matmul_params(layer: LayerSpec) -> int:
    """A layer's compute per token, as the parameters it multiplies by (attention over the
    cache is the same for every decoder layer); the embedding's tables are looked up."""
    lookups = ("tokens", "positions") if layer.kind == "embed" else ()
    return sum(prod(spec.shape) for spec in layer.weights
               if len(spec.shape) == 2 and spec.name not in lookups)


def stage_slices(layers: list[LayerSpec], stages: int) -> list[StageSlice]:
    """Contiguous slices of the layers, one per stage, each holding at least one decoder layer,
    balanced by compute (`matmul_params`; the slowest stage sets the pipeline's pace): a big
    head, such as a 50k-word vocabulary's, counts as several decoder layers."""
    decoders = sum(layer.kind == "decoder" for layer in layers)
    if stages < 1 or stages > decoders:
        raise ValueError(
            f"stages must be between 1 and the model's {decoders} decoder layers, got {stages}")
    costs = [matmul_params(layer) for layer in layers]
    cuts = _balanced_cuts(costs, stages)  # decoder boundaries, as layer indices
    bounds = [0, *cuts, len(layers)]
    return [StageSlice(rank, stages, bounds[rank], bounds[rank + 1]) for rank in range(stages)]


def _balanced_cuts(costs: list[int], stages: int) -> list[int]:
    """Where stages 1.. start (layer indices of decoders), minimizing the costliest stage. The
    embedding (layer 0) goes with stage 0, the head (the last layer) with the last stage."""
    last = len(costs) - 1
    prefix = [0, *accumulate(costs)]

    def part(rank: int, start: int, stop: int) -> int:  # decoders [start, stop) of stage rank
        begin = 0 if rank == 0 else start
        end = last + 1 if rank == stages - 1 else stop
        return prefix[end] - prefix[begin]

    def rank_key(entry: tuple[int, list[int]]) -> tuple:  # on a tie, earlier stages take more
        return entry[0], [-cut for cut in entry[1]]

    # best[rank][stop]: (costliest stage so far, cuts) with stages 0..rank covering [1, stop)
    best: list[dict[int, tuple[int, list[int]]]] = [
        {stop: (part(0, 1, stop), []) for stop in range(2, last + 1)}]
    for rank in range(1, stages):
        row = {}
        for stop in range(rank + 2, last + 1):
            row[stop] = min(((max(worst, part(rank, start, stop)), [*cuts, start])
                             for start, (worst, cuts) in best[rank - 1].items() if start < stop),
                            key=rank_key)
        best.append(row)
    return best[-1][last][1]


def stage_layers(layers: list[LayerSpec], part: StageSlice) -> list[LayerSpec]:
    """The layer list of one stage's schedule: [recv] + owned layers + [send]; owned layers
    keep their specs (and model-wide indices), boundary layers have no weights."""
    owned = list(layers[part.start : part.stop])
    head = [] if part.first else [LayerSpec(RECV, part.start - 1, ())]
    tail = [] if part.last else [LayerSpec(SEND, part.stop, ())]
    return [*head, *owned, *tail]
