"""The block schedule, checked as data: no model runs here."""

from __future__ import annotations

import pytest

from engine.schedule import (
    Compute,
    FreeWeights,
    LoadCache,
    LoadHidden,
    LoadWeights,
    StoreCache,
    StoreHidden,
    token_steps,
)

HAS_CACHE = [False, True, True, True, False]  # embed, 3 decoders, head


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("num_batches", [1, 2, 4])
def test_weights_loaded_once_per_layer_per_token(overlap, num_batches):
    steps = token_steps(HAS_CACHE, num_batches, overlap)
    loads = [step.layer for step in steps if isinstance(step, LoadWeights)]
    assert sorted(loads) == list(range(len(HAS_CACHE)))
    computes = [step for step in steps if isinstance(step, Compute)]
    assert len(computes) == len(HAS_CACHE) * num_batches
    frees = [step.layer for step in steps if isinstance(step, FreeWeights)]
    assert sorted(frees) == list(range(len(HAS_CACHE)))


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("num_batches", [1, 3])
def test_every_compute_has_its_inputs_loaded_before_it(overlap, num_batches):
    steps = token_steps(HAS_CACHE, num_batches, overlap)
    for idx, step in enumerate(steps):
        if not isinstance(step, Compute):
            continue
        before = steps[:idx]
        assert LoadWeights(step.layer) in before
        assert FreeWeights(step.layer) not in before
        if HAS_CACHE[step.layer]:
            assert LoadCache(step.layer, step.batch) in before
        if step.layer > 0:
            # its producer's output was stored before it (the hidden load may be deferred)
            assert StoreHidden(step.layer - 1, step.batch) in before


@pytest.mark.parametrize("num_batches", [2, 3])
def test_overlap_issues_loads_one_step_ahead(num_batches):
    """With overlap, the next layer's weights and the next batch's cache are requested
    before the current compute, so their copies run while it computes."""
    steps = token_steps(HAS_CACHE, num_batches, overlap=True)
    position = {step: idx for idx, step in enumerate(steps)}
    for layer in range(len(HAS_CACHE) - 1):
        assert position[LoadWeights(layer + 1)] < position[Compute(layer, 0)]
    for layer in range(1, len(HAS_CACHE) - 1):
        for batch in range(num_batches - 1):
            assert position[LoadCache(layer, batch + 1)] < position[Compute(layer, batch)]
            assert position[LoadHidden(layer, batch + 1)] < position[Compute(layer, batch)]


def test_without_overlap_loads_come_right_before_their_compute():
    steps = token_steps(HAS_CACHE, 2, overlap=False)
    position = {step: idx for idx, step in enumerate(steps)}
    for layer in range(len(HAS_CACHE)):
        for batch in range(2):
            assert position[Compute(layer, batch)] > position[LoadWeights(layer)]
            if batch == 0 and layer > 0:
                assert position[LoadWeights(layer)] > position[Compute(layer - 1, 1)]


def test_caches_stored_after_compute_and_only_for_decoders():
    steps = token_steps(HAS_CACHE, 2, overlap=True)
    position = {step: idx for idx, step in enumerate(steps)}
    stores = [step for step in steps if isinstance(step, StoreCache)]
    assert {step.layer for step in stores} == {1, 2, 3}
    for store in stores:
        assert position[store] > position[Compute(store.layer, store.batch)]
