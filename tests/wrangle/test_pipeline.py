"""The column pipeline: the same results whatever the bucketing, dedup, prefix sharing and
block size; order and NULLs kept; stats and progress."""

from __future__ import annotations

import pyarrow as pa
import pytest

import flexgen_wrangle as fw
from flexgen_wrangle.pipeline import Distinct

TEXTS = ["short", None, "a somewhat longer text with several words in it", "short", "mid sized",
         "", "another one, quite long as well, with punctuation!", None, "mid sized", "x"]
SCHEMA = {"name": "string", "n": "int", "ok": "bool"}
SETTINGS = [
    {"bucket": False}, {"dedup": False}, {"share_prefix": False}, {"block_rows": 2},
    {"bucket": False, "dedup": False, "share_prefix": False, "block_rows": 3}, {"window_rows": 3},
]


def test_distinct_rows():
    found = Distinct.of(["a", None, "b", "a"], dedup=True)
    assert found.texts == ["a", "b"] and found.counts == [2, 1]
    assert found.of_row == [0, None, 1, 0] and found.first_row == [0, 2]
    assert Distinct.of(["a", None, "a"], dedup=False).texts == ["a", "a"]


@pytest.mark.parametrize("settings", SETTINGS)
def test_classify_same_whatever_the_settings(wrangle_llm, settings):
    labels = ["yes", "no", "maybe later"]
    base = fw.classify(TEXTS, labels, llm=wrangle_llm).to_pylist()
    other = fw.classify(TEXTS, labels, llm=wrangle_llm, **settings).to_pylist()
    for left, right in zip(base, other, strict=True):
        if left is None:
            assert right is None
        else:
            assert left["label"] == right["label"]
            assert left["probability"] == pytest.approx(right["probability"], abs=1e-5)


@pytest.mark.parametrize("settings", SETTINGS[:4])
def test_extract_same_whatever_the_settings(wrangle_llm, settings):
    base = fw.extract(TEXTS, SCHEMA, llm=wrangle_llm, max_string_length=6)
    other = fw.extract(TEXTS, SCHEMA, llm=wrangle_llm, max_string_length=6, **settings)
    assert base.to_pylist() == other.to_pylist()


@pytest.mark.parametrize("settings", SETTINGS[:4])
def test_generate_same_whatever_the_settings(wrangle_llm, settings):
    base = fw.generate(TEXTS, llm=wrangle_llm, max_new_tokens=6, prefix="Say: ")
    other = fw.generate(TEXTS, llm=wrangle_llm, max_new_tokens=6, prefix="Say: ", **settings)
    assert base.to_pylist() == other.to_pylist()


def test_order_and_nulls_kept(wrangle_llm):
    labels = ["yes", "no"]
    result = fw.classify(TEXTS, labels, llm=wrangle_llm).to_pylist()
    singles = [None if text is None else fw.classify([text], labels, llm=wrangle_llm)[0].as_py()
               for text in TEXTS]
    assert [row and row["label"] for row in result] == [row and row["label"] for row in singles]
    assert [index for index, row in enumerate(result) if row is None] == [1, 7]


def test_stats(wrangle_llm):
    fw.classify(pa.chunked_array([TEXTS[:4], TEXTS[4:]]), ["yes", "no"], llm=wrangle_llm)
    stats = wrangle_llm.last_stats
    assert (stats.rows, stats.null_rows, stats.computed_rows) == (10, 2, 6)
    assert stats.prompt_tokens > 0 and stats.output_tokens > 0
    assert stats.seconds > 0 and stats.rows_per_s > 0 and stats.tokens_per_s > 0
    assert stats.parse_failures == 0 and "Policy" in stats.plan
    assert set(stats.as_dict()) >= {"rows", "tokens", "seconds", "rows_per_s", "tokens_per_s",
                                    "parse_failures", "plan"}


def test_all_null_column_needs_no_engine(wrangle_model_dir):
    llm = fw.LLM(wrangle_model_dir, progress=False)
    assert fw.classify([None, None], ["a", "b"], llm=llm).to_pylist() == [None, None]
    assert fw.classify([], ["a", "b"], llm=llm).to_pylist() == []
    assert llm._engine is None


def test_too_long_rows_are_null_and_counted(wrangle_llm):
    long_text = "word " * 600  # more tokens than the model's 512 positions
    result = fw.classify(["fine", long_text], ["yes", "no"], llm=wrangle_llm).to_pylist()
    assert result[0] is not None and result[1] is None
    assert wrangle_llm.last_stats.parse_failures == 1
    assert "too long" in wrangle_llm.last_stats.failures[0][1]


def test_progress_bar(wrangle_llm, capsys):
    fw.classify(TEXTS, ["yes", "no"], llm=wrangle_llm, progress=True)
    assert "rows/s" in capsys.readouterr().err
    fw.classify(TEXTS, ["yes", "no"], llm=wrangle_llm, progress=False)
    assert capsys.readouterr().err == ""


def test_non_text_input_is_rejected(wrangle_llm):
    with pytest.raises(fw.ColumnTypeError, match="text"):
        fw.classify([1, 2], ["a", "b"], llm=wrangle_llm)
    with pytest.raises(ValueError, match="one string"):
        fw.classify("just one", ["a", "b"], llm=wrangle_llm)
    with pytest.raises(ValueError, match="llm="):
        fw.classify(["x"], ["a", "b"])
