"""The pieces of a stage that need no process: layer slices, boundary layers, pass groups,
and GPU batches replaying the head's transitions."""

from __future__ import annotations

import pytest
import torch

from engine.batch import GpuBatch
from engine.config import ModelConfig
from engine.distributed.planning import fill_pipeline
from engine.distributed.split import RECV, SEND, stage_layers, stage_slices
from engine.distributed.stage import pass_groups
from engine.distributed.stage_runner import ReplayBatch
from engine.model import LayerSpec, WeightSpec, layer_specs


def _layers(decoder_params: list[int], head_params: int, embed_params: int = 0) -> list:
    """A model's layer list whose layers multiply by square matrices of these sizes."""
    def spec(kind: str, index: int, params: int) -> LayerSpec:
        side = int(params ** 0.5)
        return LayerSpec(kind, index, (WeightSpec("w", (side, side), "w"),))

    lookup = WeightSpec("tokens", (1000, 64), "t")  # looked up: no compute
    embed = LayerSpec("embed", 0, (lookup, *spec("embed", 0, embed_params).weights))
    decoders = [spec("decoder", idx + 1, params) for idx, params in enumerate(decoder_params)]
    return [embed, *decoders, spec("head", len(decoder_params) + 1, head_params)]


@pytest.mark.parametrize(("decoders", "head", "stages", "bounds"), [
    ([100] * 3, 0, 1, [(0, 5)]),
    ([100] * 3, 0, 2, [(0, 3), (3, 5)]),  # embed + 2 decoders | 1 decoder + head
    ([100] * 3, 0, 3, [(0, 2), (2, 3), (3, 5)]),
    ([100] * 4, 0, 2, [(0, 3), (3, 6)]),
    ([100] * 4, 200, 2, [(0, 4), (4, 6)]),  # a head of two decoders' compute: 3 | 1 + head
    ([100] * 4, 10_000, 3, [(0, 3), (3, 4), (4, 6)]),  # the head alone binds: still a decoder
])
def test_slices_balance_compute_with_a_decoder_each(decoders, head, stages, bounds):
    slices = stage_slices(_layers(decoders, head), stages)
    assert [(part.start, part.stop) for part in slices] == bounds
    assert slices[0].first and slices[-1].last


def test_too_many_stages_is_refused():
    with pytest.raises(ValueError, match="between 1 and the model's 3 decoder layers"):
        stage_slices(_layers([100] * 3, 0), 4)


def test_stage_layers_put_boundaries_around_the_owned_layers(model_dirs):
    layers = layer_specs(ModelConfig.from_pretrained(model_dirs("opt")))
    first, middle, last = (stage_layers(layers, part) for part in stage_slices(layers, 3))
    assert [layer.kind for layer in first] == ["embed", "decoder", SEND]
    assert [layer.kind for layer in middle] == [RECV, "decoder", SEND]
    assert [layer.kind for layer in last] == [RECV, "decoder", "head"]
    assert middle[1] is layers[2] and not middle[0].weights and not middle[-1].weights


@pytest.mark.parametrize(("batches", "stages", "groups"), [
    (1, 2, [[0]]), (2, 2, [[0], [1]]), (5, 2, [[0, 1, 2], [3, 4]]), (2, 3, [[0], [1]]),
])
def test_pass_groups(batches, stages, groups):
    assert pass_groups(batches, stages) == groups


def test_replayed_transitions_give_the_same_batch():
    prompts, extra = [[5, 6, 7], [8, 9]], 4
    head = ReplayBatch.from_prompts([0, 1], prompts, extra)
    other = ReplayBatch.from_prompts([0, 1], prompts, extra)
    head.advance(torch.tensor([11, 12]), torch.tensor([False, True]))  # row 1 stops
    head.feed(torch.tensor([0, 0]), torch.tensor([[3, 4], [5, 0]]), [2, 1])
    other.replay(head.take_transitions())
    assert head.transitions == [] and other.transitions == []  # a replay records nothing
    for name in ("row_ids", "start", "outputs"):
        assert getattr(other, name) == getattr(head, name)
    for name in ("ids", "valid"):
        assert torch.equal(getattr(other, name), getattr(head, name))
    assert [keep.tolist() for keep in other.keeps] == [keep.tolist() for keep in head.keeps]
    head.finish()
    other.replay(head.take_transitions())
    assert not other.active and isinstance(other, GpuBatch)


@pytest.mark.parametrize(("shape", "stages", "filled"), [
    ((8, 4), 2, (8, 4)),  # enough GPU batches already
    ((8, 1), 2, (4, 2)),  # one GPU batch: cut in two, one for each stage
    ((9, 1), 3, (3, 3)),
    ((5, 1), 2, (2, 2)),  # never more rows than planned
    ((1, 1), 3, (1, 1)),  # nothing to cut
])
def test_fill_pipeline_gives_every_stage_a_gpu_batch(shape, stages, filled):
    assert fill_pipeline(*shape, stages) == filled
