"""Arrow streams: result columns appended block by block, the input pulled lazily."""

from __future__ import annotations

import pyarrow as pa
import pytest

import flexgen_wrangle as fw
from flexgen_wrangle.jobs import blocks
from udfs.arrow_stream import classify_reader, extract_reader, generate_reader

SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])
TEXTS = ["good", None, "bad", "good", "fine", "terrible", "ok"]


def _batches(pulled: list[int]):
    for start in range(0, len(TEXTS), 2):
        pulled.append(start)
        chunk = TEXTS[start : start + 2]
        yield pa.record_batch([pa.array(range(start, start + len(chunk))), pa.array(chunk)],
                              schema=SCHEMA)


def _reader(pulled: list[int]) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(SCHEMA, _batches(pulled))


def test_blocks_regroup_rows():
    sizes = [batch.num_rows for batch in blocks(_reader([]), 3)]
    assert sizes == [3, 3, 1]


def test_classify_stream_appends_columns_lazily(wrangle_llm):
    pulled: list[int] = []
    reader = classify_reader(_reader(pulled), "text", ["yes", "no"], wrangle_llm, into="answer",
                             block_rows=3)
    assert pulled == []  # nothing read before the caller asks
    assert reader.schema.names == ["id", "text", "answer", "answer_probability"]
    first = reader.read_next_batch()
    assert first.num_rows == 3 and pulled == [0, 2]
    table = pa.Table.from_batches([first, *reader])
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    direct = fw.classify(TEXTS, ["yes", "no"], llm=wrangle_llm).to_pylist()
    assert table.column("answer").to_pylist() == [row and row["label"] for row in direct]
    assert wrangle_llm.last_stats.rows == len(TEXTS)


def test_extract_and_generate_streams(wrangle_llm):
    table = extract_reader(_reader([]), "text", {"n": "int"}, wrangle_llm, prefix="got_",
                           block_rows=4).read_all()
    assert table.schema.field("got_n").type == pa.int64()
    assert table.column("got_n").null_count >= 1
    table = generate_reader(_reader([]), "Echo {text} {id}", wrangle_llm, into="out",
                            max_new_tokens=3).read_all()
    assert table.column("out").is_null().to_pylist() == [text is None for text in TEXTS]


def test_stream_validation_before_reading(wrangle_model_dir):
    llm = fw.LLM(wrangle_model_dir, progress=False)
    pulled: list[int] = []
    with pytest.raises(KeyError, match="body"):
        classify_reader(_reader(pulled), "body", ["a", "b"], llm)
    with pytest.raises(ValueError, match="id"):
        classify_reader(_reader(pulled), "id", ["a", "b"], llm)
    assert pulled == [] and llm._engine is None


def test_top_level_map_reader(wrangle_llm):
    reader = fw.map_reader(_reader([]), "classify", wrangle_llm, column="text", labels=["a", "b"])
    table = reader.read_all()
    assert table.num_rows == len(TEXTS) and "text_label" in table.column_names
