"""Classify: valid labels always, probabilities equal to HF's, one prompt pass per row."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

import flexgen_wrangle as fw
from flexgen_wrangle import prompts
from tests.wrangle.reference import hf_label_logprobs

TEXTS = ["I love this phone, it works great.", "It broke after two days.", "meh",
         "Totally fine, nothing special about it at all."]
LABELS = ["positive", "negative", "very neutral indeed"]  # the last one is several tokens


def test_labels_are_always_valid(wrangle_llm):
    result = fw.classify(TEXTS, LABELS, llm=wrangle_llm)
    assert result.type == pa.struct([("label", pa.string()), ("probability", pa.float64())])
    for row in result.to_pylist():
        assert row["label"] in LABELS
        assert 0.0 < row["probability"] <= 1.0


def _reference(llm, model_dir, text, labels, instruction=None, examples=()):
    prompt = prompts.classify_prefix(labels, instruction, examples) + prompts.classify_row(text)
    ids = llm.tokenizer(prompt)["input_ids"]
    candidates = [llm.tokenizer(" " + label, add_special_tokens=False)["input_ids"]
                  for label in labels]
    totals = hf_label_logprobs(model_dir, ids, candidates)
    top = max(totals)
    weights = [math.exp(total - top) for total in totals]
    best = totals.index(top)
    return labels[best], weights[best] / sum(weights)


@pytest.mark.parametrize("shots", [(), (("It is great.", "positive"),)])
def test_probabilities_equal_hf(wrangle_llm, wrangle_model_dir, shots):
    task = wrangle_llm.classify_task(LABELS)
    assert max(len(candidate) for candidate in task.candidates) > 1  # multi-token label
    result = fw.classify(TEXTS, LABELS, llm=wrangle_llm, instruction="Pick one.",
                         examples=shots).to_pylist()
    for text, row in zip(TEXTS, result, strict=True):
        label, probability = _reference(wrangle_llm, wrangle_model_dir, text, LABELS,
                                        "Pick one.", shots)
        assert row["label"] == label
        assert row["probability"] == pytest.approx(probability, abs=1e-4)


def test_opt_probabilities_equal_hf(wrangle_opt_dir):
    with fw.LLM(wrangle_opt_dir, progress=False, dtype=torch.float32) as llm:
        result = llm.classify(TEXTS[:2], LABELS).to_pylist()
        for text, row in zip(TEXTS[:2], result, strict=True):
            label, probability = _reference(llm, wrangle_opt_dir, text, LABELS)
            assert row["label"] == label
            assert row["probability"] == pytest.approx(probability, abs=1e-4)


def test_prompt_computed_once_per_row(wrangle_llm, monkeypatch):
    calls = []
    engine = wrangle_llm.engine
    real_score = engine.score

    def spy(prompt_ids, candidates, prefix=None):
        calls.append((len(prompt_ids), len(candidates), prefix))
        return real_score(prompt_ids, candidates, prefix=prefix)

    monkeypatch.setattr(engine, "score", spy)
    fw.classify(TEXTS + TEXTS[:1], LABELS, llm=wrangle_llm)
    assert sum(rows for rows, _, _ in calls) == len(TEXTS)  # duplicates computed once
    assert all(count == len(LABELS) for _, count, _ in calls)  # every label in the same pass
    assert all(prefix for _, _, prefix in calls)  # the instruction went in as a shared prefix


def test_single_label_has_probability_one(wrangle_llm):
    result = fw.classify(["anything"], ["only"], llm=wrangle_llm).to_pylist()
    assert result == [{"label": "only", "probability": 1.0}]


@pytest.mark.parametrize("labels", [[], ["a", "a"], ["a", ""], "positive", ["a", 3]])
def test_bad_labels_raise_before_model_work(wrangle_model_dir, labels):
    llm = fw.LLM(wrangle_model_dir, progress=False)
    with pytest.raises(ValueError, match="label"):
        fw.classify(["x"], labels, llm=llm)
    assert llm._engine is None


def test_few_shot_label_must_be_a_label(wrangle_llm):
    with pytest.raises(fw.LabelsError, match="few-shot"):
        fw.classify(["x"], ["a", "b"], llm=wrangle_llm, examples=[("text", "c")])
