"""`df.flexgen` / `series.flexgen`: new frames, index and NULLs kept, Arrow-backed dtypes, and
every argument validated before any model work."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

import flexgen_wrangle as fw

LABELS = ["positive", "negative"]


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"title": ["Great", "Bad", None, "Okay"],
         "body": ["I love it.", None, "It broke.", "I love it."],
         "stars": [5, 1, 2, 3]},
        index=pd.Index([30, 10, 20, 40], name="id"),
    )


def test_classify_adds_label_and_probability(wrangle_llm, frame):
    before = frame.copy()
    out = frame.flexgen.classify("body", labels=LABELS, llm=wrangle_llm, into="sentiment")
    pd.testing.assert_frame_equal(frame, before)  # input untouched
    assert out is not frame and list(out.columns) == [*frame.columns, "sentiment",
                                                       "sentiment_probability"]
    assert out.index.equals(frame.index)
    assert out["sentiment"].dtype == pd.ArrowDtype(pa.string())
    assert out["sentiment_probability"].dtype == pd.ArrowDtype(pa.float64())
    assert out["sentiment"].isna().tolist() == [False, True, False, False]
    assert out.attrs["flexgen_stats"]["rows"] == 4 and "flexgen_stats" not in frame.attrs
    direct = fw.classify(frame["body"].tolist(), LABELS, llm=wrangle_llm).to_pylist()
    assert [row and row["label"] for row in direct] == \
        [None if pd.isna(value) else value for value in out["sentiment"]]


def test_extract_adds_typed_columns(wrangle_llm, frame):
    schema = {"name": "string", "n": "int", "when": "date", "tags": "list[string]", "ok": "bool"}
    out = frame.flexgen.extract("body", schema, llm=wrangle_llm, prefix="x_",
                                max_string_length=5)
    assert out.index.equals(frame.index)
    assert dict(out.dtypes.iloc[len(frame.columns):]) == {
        "x_name": pd.ArrowDtype(pa.string()), "x_n": pd.ArrowDtype(pa.int64()),
        "x_when": pd.ArrowDtype(pa.date32()), "x_tags": pd.ArrowDtype(pa.list_(pa.string())),
        "x_ok": pd.ArrowDtype(pa.bool_()),
    }
    assert out.loc[10, ["x_name", "x_n", "x_when"]].isna().all()  # NULL body -> NULL fields
    assert isinstance(out.loc[30, "x_when"], dt.date)


def test_generate_from_several_columns(wrangle_llm, frame):
    out = frame.flexgen.generate("{title}: {body}", llm=wrangle_llm, into="summary",
                                 max_new_tokens=5)
    assert out["summary"].dtype == pd.ArrowDtype(pa.string())
    assert out["summary"].isna().tolist() == [False, True, True, False]  # any NULL input
    direct = fw.generate(["Great: I love it."], llm=wrangle_llm, max_new_tokens=5)
    assert out.loc[30, "summary"] == direct[0].as_py()


def test_series_accessor_aligns_to_index(wrangle_llm, frame):
    series = frame["body"]
    labels = series.flexgen.classify(labels=LABELS, llm=wrangle_llm)
    assert labels.index.equals(series.index) and list(labels.columns) == ["label", "probability"]
    fields = series.flexgen.extract({"n": "int"}, llm=wrangle_llm)
    assert fields.index.equals(series.index) and fields["n"].dtype == pd.ArrowDtype(pa.int64())
    text = series.flexgen.generate("Say: {text}", llm=wrangle_llm, max_new_tokens=3)
    assert text.index.equals(series.index) and text.name == "body"
    assert text.isna().tolist() == [False, True, False, False]


def test_string_and_arrow_dtypes_are_text(wrangle_llm, frame):
    for dtype in ("string", pd.ArrowDtype(pa.string()), "category"):
        converted = frame.assign(body=frame["body"].astype(dtype))
        out = converted.flexgen.classify("body", LABELS, llm=wrangle_llm, into="s")
        assert out["s"].isna().tolist() == [False, True, False, False]


@pytest.mark.parametrize(("call", "error", "named"), [
    (lambda f, llm: f.flexgen.classify("nope", LABELS, llm=llm), KeyError, "nope"),
    (lambda f, llm: f.flexgen.classify("stars", LABELS, llm=llm), ValueError, "stars"),
    (lambda f, llm: f.flexgen.classify("body", [], llm=llm), ValueError, "empty"),
    (lambda f, llm: f.flexgen.classify("body", ["a", "a"], llm=llm), ValueError, "'a'"),
    (lambda f, llm: f.flexgen.extract("body", {"a": "nope"}, llm=llm), ValueError, "nope"),
    (lambda f, llm: f.flexgen.extract("nope", {"a": "int"}, llm=llm), KeyError, "nope"),
    (lambda f, llm: f.flexgen.generate("{title} {gone}", llm=llm), KeyError, "gone"),
    (lambda f, llm: f.flexgen.classify("body", LABELS), ValueError, "llm="),
])
def test_validation_before_model_work(wrangle_model_dir, frame, call, error, named):
    llm = fw.LLM(wrangle_model_dir, progress=False)
    with pytest.raises(error, match=named):
        call(frame, llm)
    assert llm._engine is None


def test_mixed_object_column_is_not_text(wrangle_model_dir):
    llm = fw.LLM(wrangle_model_dir, progress=False)
    frame = pd.DataFrame({"mixed": ["a", 1]}, dtype=object)
    with pytest.raises(fw.ColumnTypeError, match="mixed"):
        frame.flexgen.classify("mixed", LABELS, llm=llm)
    assert llm._engine is None
