"""Generate (free text, stop strings, HF-equal greedy), chat templates, the LLM handle, errors."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

import flexgen_wrangle as fw
from flexgen_wrangle import llm as llm_module
from flexgen_wrangle.template import Template
from tests.conftest import EOS
from tests.wrangle.reference import hf_greedy


def test_generate_equals_hf_greedy(wrangle_llm, wrangle_model_dir):
    prompts = ["Summarize: the quick brown fox", "Title: a story"]
    result = fw.generate(prompts, llm=wrangle_llm, max_new_tokens=12).to_pylist()
    for prompt, text in zip(prompts, result, strict=True):
        ids = hf_greedy(wrangle_model_dir, wrangle_llm.tokenizer(prompt)["input_ids"], 12, EOS)
        assert text == wrangle_llm.tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_strings_end_the_row(wrangle_llm):
    prompts = ["Summarize: the quick brown fox", "Title: a story", "x"]
    free = fw.generate(prompts, llm=wrangle_llm, max_new_tokens=16).to_pylist()
    stop = next(ch for ch in free[0][2:] if ch.strip())  # a character the first row emits
    cut = fw.generate(prompts, llm=wrangle_llm, max_new_tokens=16, stop=[stop]).to_pylist()
    assert cut[0] == free[0][: free[0].index(stop)]
    for full, short in zip(free, cut, strict=True):
        assert stop not in short and full.startswith(short)


def test_template_head_is_the_shared_prefix():
    template = Template.parse("Summarize {{this}}: {title} - {body}!")
    assert template.fields == ("title", "body")
    assert template.head == "Summarize {this}: "
    assert template.body.format(title="T", body="B") == "T - B!"
    with pytest.raises(fw.TemplateError):
        Template.parse("no fields")
    with pytest.raises(fw.TemplateError):
        Template.parse("{}")
    with pytest.raises(fw.ColumnNotFoundError, match="missing"):
        Template.parse("{title} {missing}").check_columns(["title"])


def test_chat_template_is_used(wrangle_chat_dir):
    with fw.LLM(wrangle_chat_dir, progress=False, dtype=torch.float32) as llm:
        frame = llm.encoder.frame("Instruction\n\n")
        assert frame.head == "<|user|>Instruction\n\n" and frame.tail == "\n<|assistant|>"
        assert llm.encoder.answer_lead == ""
        result = llm.classify(["good", "bad"], ["positive", "negative"]).to_pylist()
        assert all(row["label"] in ("positive", "negative") for row in result)
        out = llm.extract(["good"], {"a": "int"})
        assert llm.last_stats.parse_failures == 0 and out[0]["a"].as_py() is not None


def test_llm_is_lazy_reusable_and_closes(wrangle_model_dir):
    llm = fw.LLM(wrangle_model_dir, progress=False, dtype=torch.float32)
    assert llm._engine is None
    with llm:
        llm.classify(["a"], ["x", "y"])
        engine = llm.engine
        llm.classify(["b"], ["x", "y"])
        assert llm.engine is engine  # reused across calls
    assert engine.closed and llm._engine is None


def test_llm_pickles_as_its_recipe(wrangle_llm):
    clone = pickle.loads(pickle.dumps(wrangle_llm))
    assert clone.model_dir == wrangle_llm.model_dir and clone._engine is None
    assert clone.dtype == torch.float32


def test_demo_without_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(llm_module, "DEMO_MODEL_DIR", tmp_path / "demo_model")
    with pytest.raises(FileNotFoundError, match="train_demo_model"):
        fw.LLM.demo()


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        fw.LLM(tmp_path)


def test_errors_keep_column_and_row_through_pickle():
    err = fw.ColumnNotFoundError("no such column", column="body", row=3)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, KeyError) and (back.column, back.row) == ("body", 3)
    assert str(back) == "column 'body', row 3: no such column"
    assert isinstance(pickle.loads(pickle.dumps(fw.SchemaError("bad"))), ValueError)


def test_outputs_do_not_depend_on_the_policy(wrangle_model_dir, wrangle_llm):
    from engine import Placement, Policy

    texts = ["good", "bad", "so so", None]
    expected = wrangle_llm.classify(texts, ["yes", "no"]).to_pylist()
    offloaded = Policy(gpu_batch_size=1, num_gpu_batches=2, weights=Placement(50, 50, 0))
    for policy in ("auto", offloaded):
        with fw.LLM(wrangle_model_dir, progress=False, dtype=torch.float32, policy=policy) as llm:
            got = llm.classify(texts, ["yes", "no"]).to_pylist()
            assert llm.engine.policy.block_size >= 1 and llm.plan_text
        for left, right in zip(expected, got, strict=True):
            assert (left is None) == (right is None)
            if left is not None:
                assert left["label"] == right["label"]
                assert left["probability"] == pytest.approx(right["probability"], abs=1e-5)


def test_each_column_is_planned_anew_keeping_the_weights(wrangle_model_dir, monkeypatch):
    """With policy "auto", a classification column plans many short rows per block and an
    extraction column after it plans its own blocks; the engine (and its weights) is kept, and
    the values equal those of an engine planned for the extraction alone."""
    from engine import Placement, Policy

    texts = [f"total {n} eur" for n in range(6)]
    schema = {"total": "int"}
    with fw.LLM(wrangle_model_dir, progress=False, dtype=torch.float32) as alone:
        expected = alone.extract(texts, schema).to_pylist()
    planned = []
    real_plan = llm_module.plan

    def recording_plan(*args, **kwargs):
        planned.append(real_plan(*args, **kwargs))
        return planned[-1]

    monkeypatch.setattr(llm_module, "plan", recording_plan)
    with fw.LLM(wrangle_model_dir, progress=False, dtype=torch.float32) as llm:
        llm.classify(texts, ["yes", "no"])
        engine, first = llm.engine, llm.engine.policy
        assert llm.extract(texts, schema).to_pylist() == expected
        assert llm.engine is engine and len(planned) == 2
        assert engine.policy == planned[1].policy and first == planned[0].policy
        llm.extract(texts, schema)
        assert len(planned) == 2  # the same column shape again: not planned again
        moved = Policy(2, 1, weights=Placement(0, 100, 0))  # a plan that would move the weights
        monkeypatch.setattr(llm_module, "plan",
                            lambda *args, **kwargs: dataclasses.replace(planned[0], policy=moved))
        llm.classify(texts, ["yes", "no"])
        assert engine.policy == planned[1].policy  # kept: its weights stay where they are
        assert llm.plan is planned[1]  # and the plan it reports is the one it runs
