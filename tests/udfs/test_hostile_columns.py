"""Hostile and odd columns through the adapters (issue 16): pandas (categorical, pandas 3's `str`
dtype with NaN, lone surrogates, 100,000 repeats, 0 rows), Arrow streams (dictionaries that
change between batches, large strings, an all-NULL batch, no batches), DuckDB (NUL bytes, all
NULLs, 0 rows) and `flexgen-wrangle run` (a Parquet file with a 1 MB row and a dictionary
column). Rows come back complete and in order; what cannot be computed is NULL and counted."""

from __future__ import annotations

import logging

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flexgen_wrangle as fw
from flexgen_wrangle.cli import main

LABELS = ["yes", "no"]
TEXTS = ["good", None, "bad", "good", "fine"]


@pytest.fixture
def plain(wrangle_llm) -> list[str | None]:
    return [row and row["label"] for row in fw.classify(TEXTS, LABELS, llm=wrangle_llm).to_pylist()]


def _frame_labels(frame: pd.DataFrame, column: str = "t_label") -> list[str | None]:
    return [None if pd.isna(value) else value for value in frame[column]]


@pytest.mark.parametrize("column", [
    pd.Series(TEXTS, dtype="category"),
    pd.Series([np.nan if text is None else text for text in TEXTS], dtype="str"),
    pd.Series(TEXTS, dtype=object),
    pd.Series(TEXTS, dtype=pd.ArrowDtype(pa.large_string())),
])
def test_pandas_text_dtypes_match_plain_strings(wrangle_llm, plain, column):
    out = pd.DataFrame({"t": column}).flexgen.classify("t", labels=LABELS, llm=wrangle_llm)
    assert _frame_labels(out) == plain
    assert out.attrs["flexgen_stats"]["null_rows"] == 1
    series = column.flexgen.classify(labels=LABELS, llm=wrangle_llm)
    assert [None if pd.isna(value) else value for value in series["label"]] == plain


def test_pandas_all_nan_str_and_zero_rows(wrangle_llm):
    nan = pd.DataFrame({"t": pd.Series([np.nan] * 4, dtype="str")})
    out = nan.flexgen.classify("t", labels=LABELS, llm=wrangle_llm)
    assert out["t_label"].isna().all() and len(out) == 4
    empty = pd.DataFrame({"t": pd.Series([], dtype="str")})
    out = empty.flexgen.extract("t", {"n": "int"}, llm=wrangle_llm)
    assert list(out.columns) == ["t", "n"] and len(out) == 0


def test_pandas_surrogates_are_repaired_not_fatal(wrangle_llm, caplog):
    frame = pd.DataFrame({"t": pd.Series(["bad \udcff byte", None, "fine"], dtype=object)})
    with caplog.at_level(logging.WARNING, logger="flexgen_wrangle.columns"):
        out = frame.flexgen.classify("t", labels=LABELS, llm=wrangle_llm)
    assert "column 't': 1 row(s) hold lone surrogates" in caplog.text
    assert out["t_label"].notna().tolist() == [True, False, True]
    assert frame["t"][0] == "bad \udcff byte"  # the input is untouched


def test_pandas_100000_repeats_are_computed_once(wrangle_llm):
    frame = pd.DataFrame({"t": ["one review, many times"] * 100_000})
    out = frame.flexgen.classify("t", labels=LABELS, llm=wrangle_llm)
    assert out.attrs["flexgen_stats"]["computed_rows"] == 1
    assert out["t_label"].notna().all() and out["t_label"].nunique() == 1


def _reader(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(schema, batches)


def test_arrow_stream_of_changing_dictionaries(wrangle_llm, plain):
    schema = pa.schema([("id", pa.int64()), ("text", pa.dictionary(pa.int32(), pa.string()))])
    batches = [pa.record_batch([pa.array([0, 1]), pa.array(TEXTS[:2]).dictionary_encode()],
                               schema=schema),
               pa.record_batch([pa.array([2, 3, 4]), pa.array(TEXTS[2:]).dictionary_encode()],
                               schema=schema)]
    out = fw.map_reader(_reader(batches, schema), "classify", wrangle_llm, column="text",
                        labels=LABELS, into="s", block_rows=3).read_all()
    assert out.column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert out.column("s").to_pylist() == plain


def test_arrow_stream_large_strings_null_batch_and_no_batches(wrangle_llm, plain):
    schema = pa.schema([("text", pa.large_string())])
    batches = [pa.record_batch([pa.array([None, None], pa.large_string())], schema=schema),
               pa.record_batch([pa.array(TEXTS, pa.large_string())], schema=schema)]
    out = fw.map_reader(_reader(batches, schema), "classify", wrangle_llm, column="text",
                        labels=LABELS, into="s", block_rows=2).read_all()
    assert out.column("s").to_pylist() == [None, None, *plain]
    empty = fw.map_reader(_reader([], schema), "classify", wrangle_llm, column="text",
                          labels=LABELS, into="s").read_all()
    assert empty.num_rows == 0 and "s" in empty.schema.names


def test_duckdb_nul_bytes_nulls_and_zero_rows(wrangle_llm):
    with duckdb.connect() as con:
        fw.register_duckdb(con, wrangle_llm)
        con.execute("CREATE TABLE t (id INT, body VARCHAR)")
        con.execute("INSERT INTO t VALUES (1, 'nul' || chr(0) || 'inside'), (2, NULL), "
                    "(3, chr(8238) || 'bidi'), (4, '')")
        rows = con.execute("SELECT id, flexgen_classify(body, ['yes', 'no']) FROM t ORDER BY id"
                           ).fetchall()
        assert [row[0] for row in rows] == [1, 2, 3, 4]
        assert [row[1] is None for row in rows] == [False, True, False, False]
        alone = fw.classify(["nul\x00inside"], LABELS, llm=wrangle_llm)[0].as_py()["label"]
        assert rows[0][1] == alone
        none = con.execute("SELECT flexgen_classify(body, ['yes', 'no']) FROM t WHERE id > 9"
                           ).fetchall()
        assert none == []
        nulls = con.execute("SELECT flexgen_generate(CAST(NULL AS VARCHAR)) FROM range(3)"
                            ).fetchall()
        assert nulls == [(None,)] * 3


def test_cli_run_over_a_1mb_row_and_a_dictionary_column(wrangle_model_dir, tmp_path, capsys):
    texts = ["fine", "x" * 1_000_000, None, "good", "fine"]
    table = pa.table({"id": list(range(5)),
                      "text": pa.array(texts).dictionary_encode()})
    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(table, source)
    code = main(["run", str(source), "--column", "text", "--classify", "yes,no", "--into", "s",
                 "--model", str(wrangle_model_dir), "--output", str(output), "--no-progress"])
    assert code == 0
    out = pq.read_table(output)
    assert out.column("id").to_pylist() == [0, 1, 2, 3, 4]
    labels = out.column("s").to_pylist()
    assert labels[1] is None and labels[2] is None and labels[0] == labels[4] is not None
    assert "1 parse failures" in capsys.readouterr().out


def test_duckdb_struct_fields_that_need_quoting(wrangle_llm):
    schema = {"unit price": "float", 'say "hi"': "int", "select": "bool", "naïve ✓": "int"}
    with duckdb.connect() as con:
        fw.register_duckdb_extractor(con, "extract_odd", schema, wrangle_llm)
        con.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('total 12.5'), (NULL)) v(body)")
        rows = con.execute('SELECT (extract_odd(body))."unit price", '
                           '(extract_odd(body))."say ""hi""", (extract_odd(body))."select", '
                           '(extract_odd(body))."naïve ✓" FROM t').fetchall()
    assert len(rows) == 2 and rows[1] == (None, None, None, None)
    assert isinstance(rows[0][0], float | None) and isinstance(rows[0][2], bool | None)


def test_a_prompt_with_no_room_is_refused_before_work_in_every_adapter(wrangle_model_dir,
                                                                       wrangle_llm, tmp_path,
                                                                       capsys):
    labels = [f"label{idx}" for idx in range(1000)]
    with pytest.raises(fw.LabelsError, match="list of 1000 labels"):
        pd.DataFrame({"t": ["x"]}).flexgen.classify("t", labels=labels, llm=wrangle_llm)
    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), source)
    code = main(["run", str(source), "--column", "text", "--classify", ",".join(labels),
                 "--model", str(wrangle_model_dir), "--output", str(output), "--no-progress"])
    assert code == 2 and "list of 1000 labels" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.parquet"]  # nothing written
