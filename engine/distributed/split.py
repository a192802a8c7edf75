"""Which layers each pipeline stage owns, and the layer list a stage's block schedule runs.

The model's layers (`embed`, `decoder` x N, `head`) are cut into contiguous slices with the
decoder layers spread as evenly as possible: the embedding goes with the first stage, the head
with the last. A stage's schedule runs its own layers between two boundary layers: `recv`
(first, on every stage but the first: the hidden state arrives from the stage before) and
`send` (last, on every stage but the last: the hidden state leaves for the next). The block
schedule treats them as it treats the embedding and the head (no input / no stored output), so
neither the steps nor the executor know about stages.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def stage_slices(num_decoders: int, stages: int) -> list[StageSlice]:
    """Contiguous slices of the `num_decoders + 2` layers, one per stage, each holding at least
    one decoder layer; earlier stages take the remainder's extra decoders."""
    if stages < 1 or stages > num_decoders:
        raise ValueError(
            f"stages must be between 1 and the model's {num_decoders} decoder layers, got {stages}")
    share, extra = divmod(num_decoders, stages)
    slices, decoder_start = [], 1  # layer 0 is the embedding
    for rank in range(stages):
        decoder_stop = decoder_start + share + (1 if rank < extra else 0)
        start = 0 if rank == 0 else decoder_start
        stop = decoder_stop + 1 if rank == stages - 1 else decoder_stop  # the head is last
        slices.append(StageSlice(rank, stages, start, stop))
        decoder_start = decoder_stop
    return slices


def stage_layers(layers: list[LayerSpec], part: StageSlice) -> list[LayerSpec]:
    """The layer list of one stage's schedule: [recv] + owned layers + [send]; owned layers
    keep their specs (and model-wide indices), boundary layers have no weights."""
    owned = list(layers[part.start : part.stop])
    head = [] if part.first else [LayerSpec(RECV, part.start - 1, ())]
    tail = [] if part.last else [LayerSpec(SEND, part.stop, ())]
    return [*head, *owned, *tail]
