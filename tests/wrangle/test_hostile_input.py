"""Hostile and odd input through the public API (issue 16): rows far longer than the model's
context, text that is not valid Unicode, control and bidirectional characters, all-NULL, empty,
repeated and empty columns; labels that collide, a 200-token label, 1,000 labels; schemas that
cannot be typed, 200 fields, field names that need quoting. Every case gives a correct result
or a clear error naming the row / label / field, and no row is ever lost."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch
from pydantic import BaseModel

import flexgen_wrangle as fw
from flexgen_wrangle.errors import LabelsError, SchemaError
from flexgen_wrangle.tasks import classify as classify_module
from tests.models import hf_logprob_scores

LABELS = ["yes", "no"]
ONE_MB = "a" * 1_000_000


def _labels(result: pa.Array) -> list[str | None]:
    return [row and row["label"] for row in result.to_pylist()]


def _alone(llm: Any, texts: list[str | None], labels: list[str] = LABELS) -> list[str | None]:
    return [None if text is None else _labels(fw.classify([text], labels, llm=llm))[0]
            for text in texts]


@pytest.fixture
def spy_encode(wrangle_llm, monkeypatch) -> list[int]:
    """The longest text the tokenizer is asked to encode, per call."""
    seen: list[int] = []
    encode = wrangle_llm.encoder.encode

    def recording(frame, texts, max_tokens=None):
        seen.append(max((len(text) for text in texts), default=0))
        return encode(frame, texts, max_tokens)

    monkeypatch.setattr(wrangle_llm.encoder, "encode", recording)
    return seen


# -- rows longer than the model's context --------------------------------------------------


def test_a_1mb_row_is_null_counted_and_never_tokenized(wrangle_llm, spy_encode):
    texts = [ONE_MB, "fine", None, "word " * 200_000, "fine"]
    began = time.perf_counter()
    result = fw.classify(texts, LABELS, llm=wrangle_llm)
    assert time.perf_counter() - began < 5.0
    stats, encoded = wrangle_llm.last_stats, list(spy_encode)
    assert (stats.rows, stats.null_rows, stats.parse_failures) == (5, 1, 2)
    assert [row for row, _ in stats.failures] == [0, 3]
    assert "prompt too long: more than 508 tokens (1,000,000 characters)" in stats.failures[0][1]
    assert "never cut" in stats.failures[0][1]
    assert max(encoded) < 100  # the 1 MB rows never reached the tokenizer
    labels = _labels(result)
    assert labels[0] is None and labels[2] is None and labels[3] is None
    assert labels[1] == labels[4] == _alone(wrangle_llm, ["fine"])[0]


def test_a_row_just_too_long_is_tokenized_only_to_the_limit(wrangle_llm, spy_encode):
    long_row = "word " * 700  # 3,500 characters: more tokens than fit, fewer than the cut-off
    result = fw.extract([long_row, "n is 3"], {"n": "int"}, llm=wrangle_llm)
    assert result.to_pylist()[0] is None and result.to_pylist()[1] is not None
    assert wrangle_llm.last_stats.parse_failures == 1
    assert spy_encode[0] == len(fw.prompts.extract_row(long_row))
    ids = wrangle_llm.encoder.encode(wrangle_llm.encoder.frame(""), [long_row], max_tokens=100)
    assert len(ids[0]) == 101  # cut at the limit + 1: held ids stay bounded


def test_generate_keeps_the_rule(wrangle_llm):
    result = fw.generate([ONE_MB, "Say: hi"], llm=wrangle_llm, max_new_tokens=3).to_pylist()
    assert result[0] is None and isinstance(result[1], str)
    assert wrangle_llm.last_stats.parse_failures == 1


# -- text that is not valid Unicode, control and bidirectional characters ------------------


def test_lone_surrogates_are_repaired_with_a_warning(wrangle_llm, caplog):
    texts = ["bad \ud800 text", "pair \ud83d\ude00 joined", "fine"]
    with caplog.at_level(logging.WARNING, logger="flexgen_wrangle.columns"):
        result = fw.classify(texts, LABELS, llm=wrangle_llm)
    assert "2 row(s) hold lone surrogates" in caplog.text and "row 0" in caplog.text
    assert _labels(result) == _alone(wrangle_llm, ["bad \ufffd text", "pair \U0001f600 joined",
                                                   "fine"])
    assert fw.generate(texts, llm=wrangle_llm, max_new_tokens=2).null_count == 0


def test_invalid_utf8_in_an_arrow_array_is_repaired(wrangle_llm, caplog):
    offsets = pa.array([0, 3, 7], pa.int32()).buffers()[1]
    bad = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"a\xffbgood")])
    with caplog.at_level(logging.WARNING, logger="flexgen_wrangle.columns"):
        result = fw.classify(bad, LABELS, llm=wrangle_llm)
    assert "bytes that are not UTF-8" in caplog.text
    assert _labels(result) == _alone(wrangle_llm, ["a\ufffdb", "good"])


ODD = ["nul\x00inside", "\x01\x02\x1b[31mred\x1b[0m\r\n\t\x7f", "\u202eevil\u202c \u05e9\u05dc\u05d5\u05dd",
       "\u0645\u0631\u062d\u0628\u0627 mixed", "e\u0301\u0301\u0301" * 50, "\ufeffbom \u200b\u200d"]


def test_control_bidi_and_combining_characters_each_get_their_own_answer(wrangle_llm):
    result = fw.classify(ODD, LABELS, llm=wrangle_llm)
    assert result.null_count == 0
    assert _labels(result) == _alone(wrangle_llm, ODD)
    extracted = fw.extract(ODD, {"name": "string"}, llm=wrangle_llm, max_string_length=8)
    assert len(extracted) == len(ODD)
    assert wrangle_llm.last_stats.rows == len(ODD)


# -- degenerate columns --------------------------------------------------------------------


@pytest.mark.parametrize("column", [[None] * 5, pa.nulls(5), pa.nulls(5, pa.string()),
                                    pa.array([None] * 5, pa.large_string())])
def test_an_all_null_column_is_all_null_without_model_work(wrangle_llm, column):
    result = fw.classify(column, LABELS, llm=wrangle_llm)
    assert result.null_count == 5 and len(result) == 5
    stats = wrangle_llm.last_stats
    assert (stats.null_rows, stats.computed_rows, stats.prompt_tokens) == (5, 0, 0)


def test_an_all_empty_column_is_computed_once(wrangle_llm):
    result = fw.extract([""] * 6, {"n": "int"}, llm=wrangle_llm)
    assert len(result) == 6 and wrangle_llm.last_stats.computed_rows == 1
    assert len(set(map(json.dumps, result.to_pylist()))) == 1


@pytest.fixture
def count_engine_calls(wrangle_llm, monkeypatch) -> list[int]:
    """Rows of each engine.score / engine.generate call."""
    calls: list[int] = []
    engine = wrangle_llm.engine
    for name in ("score", "generate"):
        method = getattr(engine, name)

        def counted(prompts, *args, _method=method, **kwargs):
            calls.append(len(prompts))
            return _method(prompts, *args, **kwargs)

        monkeypatch.setattr(engine, name, counted)
    return calls


def test_one_value_repeated_100000_times_is_computed_once(wrangle_llm, count_engine_calls):
    texts = ["the same review, again"] * 100_000
    began = time.perf_counter()
    result = fw.classify(texts, LABELS, llm=wrangle_llm)
    assert time.perf_counter() - began < 5.0
    assert count_engine_calls == [1]
    assert wrangle_llm.last_stats.computed_rows == 1 and len(result) == 100_000
    assert result.null_count == 0 and len(set(_labels(result))) == 1


@pytest.mark.parametrize("column", [[], pa.array([], pa.string()), pa.chunked_array([], pa.string()),
                                    pa.array([], pa.large_string())])
def test_a_zero_row_column_gives_zero_rows(wrangle_llm, column):
    assert len(fw.classify(column, LABELS, llm=wrangle_llm)) == 0
    assert len(fw.extract(column, {"n": "int"}, llm=wrangle_llm)) == 0
    assert len(fw.generate(column, llm=wrangle_llm)) == 0


def test_dictionary_large_and_view_columns_match_plain_strings(wrangle_llm):
    texts = ["good", None, "bad", "good", "fine"]
    plain = _labels(fw.classify(texts, LABELS, llm=wrangle_llm))
    chunked = pa.chunked_array([pa.array(texts[:2]).dictionary_encode(),
                                pa.array(texts[2:]).dictionary_encode()])  # two dictionaries
    for column in (pa.array(texts).dictionary_encode(), chunked,
                   pa.array(texts, pa.large_string()), pa.array(texts, pa.string_view())):
        assert _labels(fw.classify(column, LABELS, llm=wrangle_llm)) == plain


def test_a_binary_column_says_to_decode_it(wrangle_llm):
    with pytest.raises(fw.ColumnTypeError, match="got bytes .*decode them first"):
        fw.classify(pa.array([b"abc"]), LABELS, llm=wrangle_llm)


# -- labels --------------------------------------------------------------------------------


def test_labels_that_tokenize_alike_are_refused_naming_both(wrangle_model_dir, tmp_path):
    model_dir = Path(shutil.copytree(wrangle_model_dir, tmp_path / "lowercasing"))
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer["normalizer"] = {"type": "Lowercase"}
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    llm = fw.LLM(model_dir, progress=False, policy=None, dtype=torch.float32)
    with pytest.raises(LabelsError, match=r"labels 'Yes' and 'YES' encode to the same tokens "
                                          r"\[\d+(, \d+)*\].*rename or merge one"):
        llm.classify(["x"], ["Yes", "no", "YES"])


def _label_of(llm: Any, tokens: int) -> str:
    words = ["positive", "negative", "label", "text", "great", "phone"]
    label = ""
    while len(llm.encoder.encode_answer(label)) < tokens:
        label = (label + " " + words[len(label) % len(words)]).strip()
    return label


def test_a_200_token_label_scores_as_hf_does(wrangle_llm, wrangle_model_dir):
    long_label = _label_of(wrangle_llm, 200)
    labels = ["no", long_label]
    result = fw.classify(["works great"], labels, llm=wrangle_llm).to_pylist()[0]
    task = wrangle_llm.classify_task(labels)
    frame = wrangle_llm.encoder.frame(task.prefix_text)
    prompt = wrangle_llm.encoder.encode(frame, [task.row_text("works great")])
    reference = hf_logprob_scores(wrangle_model_dir, prompt, task.candidates)[0]
    best = max(range(2), key=reference.__getitem__)
    assert result["label"] == labels[best]
    expected = classify_module.softmax(reference)[best]
    assert result["probability"] == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_labels_scored_in_chunks_score_as_all_at_once(wrangle_llm, monkeypatch):
    labels = ["yes", "no", "maybe", "never", "always"]
    texts = ["good phone", "it broke", None, "fine"]
    whole = fw.classify(texts, labels, llm=wrangle_llm).to_pylist()
    monkeypatch.setattr(classify_module, "CANDIDATES_PER_CALL", 2)
    chunked = fw.classify(texts, labels, llm=wrangle_llm).to_pylist()
    for left, right in zip(whole, chunked, strict=True):
        assert (left and left["label"]) == (right and right["label"])
        if left:
            assert left["probability"] == pytest.approx(right["probability"], abs=1e-6)


def test_1000_labels_beyond_the_context_are_refused_before_any_work(wrangle_llm,
                                                                     count_engine_calls):
    labels = [f"label{idx}" for idx in range(1000)]
    with pytest.raises(LabelsError, match=r"list of 1000 labels\) takes \d+ tokens.*512 "
                                          "positions.*fewer or shorter labels"):
        fw.classify(["x", None], labels, llm=wrangle_llm)
    assert count_engine_calls == []


# -- schemas -------------------------------------------------------------------------------


class Node(BaseModel):
    name: str
    children: list[Node]


class Tagged(BaseModel):
    value: int | str


class Mapping(BaseModel):
    counts: dict[str, int]


@pytest.mark.parametrize(("schema", "message"), [
    (Node, r"column 'schema.children\[\]': the schema is recursive: 'Node' contains itself"),
    (Tagged, r"column 'schema.value': unions other than `X or null`.*one type"),
    (Mapping, r"column 'schema.counts': a map with free keys .*list its keys"),
    ({"id": "uuid"}, r"column 'schema.id': unknown type 'uuid'; use string, int"),
    ({"type": "object", "properties": {"when": {"type": "null"}}},
     r"column 'schema.when': unsupported type 'null'; supported: string"),
    ({"a": {"b": ("int",)}}, r"column 'schema.a.b': unsupported type \('int',\)"),
])
def test_schemas_that_cannot_be_typed_name_the_field(wrangle_llm, schema, message):
    with pytest.raises(SchemaError, match=message):
        fw.extract(["x"], schema, llm=wrangle_llm)


def test_200_fields_beyond_the_context_are_refused_naming_the_count(wrangle_llm):
    with pytest.raises(SchemaError, match="schema of 200 fields\\) takes \\d+ tokens.*fewer "
                                          "fields per call"):
        fw.extract(["x"], {f"f{idx}": "bool" for idx in range(200)}, llm=wrangle_llm)


QUOTED = {"unit price": "float", 'say "hi"': "int", "a.b": "bool", "select": "int",
          "naïve ✓": "bool", "back\\slash": "int", "new\nline": "bool"}


def test_field_names_that_need_quoting_come_back_exactly(wrangle_llm):
    result = fw.extract(["Invoice total 12.5", None], QUOTED, llm=wrangle_llm, max_new_tokens=60)
    assert [field.name for field in result.type] == list(QUOTED)
    row = result.to_pylist()[0]
    assert row is None or set(row) == set(QUOTED)
    assert result.to_pylist()[1] is None and wrangle_llm.last_stats.rows == 2


@pytest.fixture(scope="module")
def long_context_llm(tmp_path_factory: pytest.TempPathFactory):
    """The tiny Llama with 8,192 positions: room for 1,000 labels or 200 fields."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.conftest import BOS, EOS, PAD, build_tokenizer

    out = tmp_path_factory.mktemp("long_context")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                         intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=8192, tie_word_embeddings=False,
                         eos_token_id=EOS, bos_token_id=BOS, pad_token_id=PAD)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    model.save_pretrained(out)
    tokenizer.model_max_length = 8192
    tokenizer.save_pretrained(out)
    with fw.LLM(out, progress=False, dtype=torch.float32, policy=None) as llm:
        yield llm


@pytest.mark.slow
def test_1000_labels_on_a_long_context_model(long_context_llm, monkeypatch):
    labels = [f"label{idx}" for idx in range(1000)]
    texts = ["this is fine", None, "another row"]
    chunked = fw.classify(texts, labels, llm=long_context_llm).to_pylist()
    assert chunked[1] is None and all(row["label"] in labels for row in (chunked[0], chunked[2]))
    monkeypatch.setattr(classify_module, "CANDIDATES_PER_CALL", 250)
    other = fw.classify(texts, labels, llm=long_context_llm).to_pylist()
    assert [row and row["label"] for row in other] == [row and row["label"] for row in chunked]


@pytest.mark.slow
def test_200_fields_on_a_long_context_model(long_context_llm):
    schema = {f"f{idx}": "bool" for idx in range(200)}
    result = fw.extract(["x is true", None], schema, llm=long_context_llm)
    assert len(result.type) == 200
    row = result.to_pylist()[0]
    stats = long_context_llm.last_stats
    assert (row is not None and set(row) == set(schema)) or stats.parse_failures == 1
