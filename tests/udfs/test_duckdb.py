"""DuckDB SQL functions: the same answers as the Python API, typed STRUCTs, NULLs, bad rows and
bad arguments, and concurrent calls merged into one engine run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import duckdb
import pyarrow as pa
import pytest

import flexgen_wrangle as fw
from udfs.merge_queue import MergeQueue, queue_for

WORDS = ["good", "bad", "fine", "awful", "ok", "great", "poor", "nice"]
LABELS = ["yes", "no"]
SCHEMA = {"n": "int", "ok": "bool"}


def _texts(rows: int) -> list[str | None]:
    return [None if row % 7 == 3 else f"{WORDS[row % 8]} {WORDS[(row // 8) % 8]}"
            for row in range(rows)]


@pytest.fixture
def con(wrangle_llm):
    with duckdb.connect() as connection:
        yield connection, fw.register_duckdb(connection, wrangle_llm)


def test_import_does_not_import_duckdb():
    code = ("import sys, flexgen_wrangle as fw; assert 'duckdb' not in sys.modules; "
            "assert callable(fw.register_duckdb) and callable(fw.duckdb_apply)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sql_matches_the_python_api(con, wrangle_llm):
    """NULLs, a join, ORDER BY and two threads over a parallel scan (an Arrow table of many
    batches), 5,000 rows: row for row what `fw.classify` / `fw.extract` / `fw.generate` give."""
    connection, _ = con
    rows = 5000
    docs = pa.table({"id": list(range(rows)), "body": _texts(rows)})
    meta = pa.table({"id": list(range(rows)), "lang": ["en", "de"] * (rows // 2)})
    connection.register("docs", pa.Table.from_batches(docs.to_batches(max_chunksize=500)))
    connection.register("meta", meta)
    connection.sql("SET threads=2")
    result = connection.sql(
        "SELECT d.id, m.lang, flexgen_classify(d.body, ['yes', 'no']) AS label, "
        "flexgen_classify_scored(d.body, ['yes', 'no']) AS scored, "
        f"flexgen_extract(d.body, '{json.dumps(SCHEMA)}') AS fields, "
        "flexgen_generate_n(d.body, 3) AS gen "
        "FROM docs d JOIN meta m USING (id) ORDER BY d.id DESC").fetchall()
    assert [row[0] for row in result] == list(range(rows - 1, -1, -1))
    texts = [docs.column("body")[row_id].as_py() for row_id, *_ in result]
    classified = fw.classify(texts, LABELS, llm=wrangle_llm).to_pylist()
    extracted = fw.extract(texts, SCHEMA, llm=wrangle_llm).to_pylist()
    generated = fw.generate(texts, llm=wrangle_llm, max_new_tokens=3).to_pylist()
    for (_, _, label, scored, fields, gen), want, fields_want, gen_want in zip(
            result, classified, extracted, generated, strict=True):
        assert label == (want and want["label"])
        assert (scored is None) == (want is None)
        if want is not None:
            assert scored["label"] == want["label"]
            assert scored["probability"] == pytest.approx(want["probability"], rel=1e-6)
        assert (json.loads(fields) if fields is not None else None) == fields_want
        assert gen == gen_want


def test_typed_extractor_returns_struct_fields_of_the_declared_types(wrangle_llm):
    schema = {"vendor": "string", "total": "float", "date": "date", "items": "list[string]",
              "count": "int", "paid": "bool", "address": {"city": "string"}}
    with duckdb.connect() as connection:
        fw.register_duckdb_extractor(connection, "extract_invoice", schema, wrangle_llm)
        connection.register("docs", pa.table({"body": _texts(20)}))
        types = connection.sql(
            "SELECT typeof((extract_invoice(body)).vendor), typeof((extract_invoice(body)).total), "
            "typeof((extract_invoice(body)).date), typeof((extract_invoice(body)).items), "
            "typeof((extract_invoice(body)).count), typeof((extract_invoice(body)).paid), "
            "typeof((extract_invoice(body)).address) FROM docs LIMIT 1").fetchall()[0]
        assert types == ("VARCHAR", "DOUBLE", "DATE", "VARCHAR[]", "BIGINT", "BOOLEAN",
                         "STRUCT(city VARCHAR)")
        values = connection.sql("SELECT extract_invoice(body) FROM docs").fetchall()
    assert [row[0] for row in values] == fw.extract(_texts(20), schema, llm=wrangle_llm).to_pylist()


def test_nulls_in_give_nulls_out(con):
    connection, _ = con
    row = connection.sql(
        "SELECT flexgen_classify(NULL, ['a', 'b']), flexgen_classify('good', NULL), "
        "flexgen_extract(NULL, '{\"n\": \"int\"}'), flexgen_extract('good', NULL), "
        "flexgen_generate(NULL), flexgen_generate_n('good', NULL), "
        "flexgen_classify_scored(NULL, ['a', 'b'])").fetchall()[0]
    assert row == (None,) * 7
    mixed = connection.sql(
        "SELECT flexgen_classify(t, l) FROM (VALUES ('good', ['a', 'b']), (NULL, ['a', 'b']), "
        "('bad', NULL), ('ok', ['c', 'd'])) v(t, l)").fetchall()
    assert [value is None for (value,) in mixed] == [False, True, True, False]
    assert mixed[0][0] in ("a", "b") and mixed[3][0] in ("c", "d")


def test_one_bad_row_is_null_and_the_query_goes_on(con):
    connection, functions = con
    too_long = " ".join(["word"] * 700)  # more tokens than the model's 512 positions
    values = connection.sql(
        "SELECT flexgen_classify(t, ['yes', 'no']) FROM (VALUES ('good'), (?), ('bad')) v(t)",
        params=[too_long]).fetchall()
    assert values[1] == (None,) and values[0][0] in LABELS and values[2][0] in LABELS
    stats = functions.stats["flexgen_classify"]
    assert stats.parse_failures == 1 and "too long" in stats.failures[0][1]


@pytest.mark.parametrize(("sql", "named"), [
    ("flexgen_classify('x', [])", ("flexgen_classify", "labels", "empty")),
    ("flexgen_classify('x', ['a', 'a'])", ("flexgen_classify", "labels", "more than once")),
    ("flexgen_classify('x', ['a', NULL])", ("flexgen_classify", "labels", "NULL")),
    ("flexgen_extract('x', 'not json')", ("flexgen_extract", "schema_json", "not JSON")),
    ("flexgen_extract('x', '{\"n\": \"complex\"}')", ("flexgen_extract", "schema_json", "complex")),
    ("flexgen_generate_n('x', 0)", ("flexgen_generate_n", "max_new_tokens", ">= 1")),
    ("flexgen_classify('x', [1, 2])", ("flexgen_classify", "No function matches")),
    ("flexgen_classify(42, ['a'])", ("flexgen_classify", "No function matches")),
])
def test_bad_arguments_fail_naming_the_function_and_argument(con, sql, named):
    connection, _ = con
    with pytest.raises(duckdb.Error) as error:
        connection.sql(f"SELECT {sql}").fetchall()
    for part in named:
        assert part in str(error.value)


def test_generate_has_side_effects_and_the_others_not(con):
    connection, functions = con
    flags = dict(connection.sql(
        "SELECT function_name, has_side_effects FROM duckdb_functions() "
        "WHERE function_name LIKE 'flexgen_%'").fetchall())
    assert flags == {"flexgen_classify": False, "flexgen_classify_scored": False,
                     "flexgen_extract": False, "flexgen_generate": True,
                     "flexgen_generate_n": True}
    assert sorted(functions.names) == sorted(flags)


def test_prefix_names_the_functions(wrangle_llm):
    with duckdb.connect() as connection:
        functions = fw.register_duckdb(connection, wrangle_llm, prefix="llm_")
        assert "llm_classify" in functions.names
        assert connection.sql("SELECT llm_classify('good', ['yes', 'no'])").fetchall()[0][0] in LABELS


class _EchoLLM:
    """Stands in for an LLM: records each run's size, returns the texts upper-cased."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.sizes: list[int] = []
        self.seconds = seconds
        self.last_stats = fw.RunStats("echo")

    def run(self, task, texts, progress=True):
        self.sizes.append(len(texts))
        time.sleep(self.seconds)
        if task == "fail":
            raise RuntimeError("engine failure")
        return pa.array([text.upper() for text in texts.to_pylist()])


def _call_together(queue: MergeQueue, llm: _EchoLLM, tasks: list[str]) -> list:
    barrier, results = threading.Barrier(len(tasks)), [None] * len(tasks)

    def call(idx: int) -> None:
        barrier.wait()
        texts = pa.array([f"t{idx}-{row}" for row in range(10)])
        try:
            results[idx] = queue.run(llm, tasks[idx], texts, fw.RunStats("echo"))
        except RuntimeError as err:
            results[idx] = err

    threads = [threading.Thread(target=call, args=(idx,)) for idx in range(len(tasks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_merge_queue_merges_calls_that_arrive_together():
    llm, queue = _EchoLLM(), MergeQueue(linger_s=0.05)
    results = _call_together(queue, llm, ["task"] * 8)
    for idx, result in enumerate(results):
        assert result.to_pylist() == [f"T{idx}-{row}" for row in range(10)]
    assert queue.calls == 8 and queue.runs < 8 and sum(llm.sizes) == 80
    assert max(llm.sizes) > 10


def test_merge_queue_keeps_tasks_apart_and_reports_failures_to_their_callers():
    llm, queue = _EchoLLM(), MergeQueue(linger_s=0.05)
    results = _call_together(queue, llm, ["task", "fail", "task", "fail"])
    assert isinstance(results[1], RuntimeError) and isinstance(results[3], RuntimeError)
    assert results[0].to_pylist()[0] == "T0-0" and results[2].to_pylist()[0] == "T2-0"
    assert queue.runs == 2  # one per task


def test_merge_queue_caps_a_run():
    llm, queue = _EchoLLM(), MergeQueue(max_rows=25, linger_s=0.05)
    _call_together(queue, llm, ["task"] * 6)
    assert max(llm.sizes) <= 25


def test_parallel_scan_calls_are_merged(wrangle_llm):
    """Four DuckDB threads over an Arrow table of many batches: fewer engine runs than calls."""
    queue = queue_for(wrangle_llm)
    linger, queue.linger_s = queue.linger_s, 0.05
    try:
        with duckdb.connect() as connection:
            fw.register_duckdb(connection, wrangle_llm)
            rows = 16 * 2048
            docs = pa.table({"body": _texts(rows)})
            connection.register("docs", pa.Table.from_batches(docs.to_batches(max_chunksize=2048)))
            connection.sql("SET threads=4")
            runs, calls = queue.runs, queue.calls
            count = connection.sql("SELECT count(flexgen_classify(body, ['yes', 'no'])) "
                                   "FROM docs").fetchall()[0][0]
        assert count == sum(text is not None for text in _texts(rows))
        assert queue.calls - calls >= 16 and queue.runs - runs < queue.calls - calls
    finally:
        queue.linger_s = linger


def test_two_connections_in_two_threads_share_one_engine(wrangle_llm):
    texts = _texts(300)
    want = [row and row["label"] for row in fw.classify(texts, LABELS, llm=wrangle_llm).to_pylist()]
    got: dict[int, list] = {}

    def query(idx: int) -> None:
        with duckdb.connect() as connection:
            fw.register_duckdb(connection, wrangle_llm)
            connection.register("docs", pa.table({"id": range(300), "body": texts}))
            got[idx] = [label for (label,) in connection.sql(
                "SELECT flexgen_classify(body, ['yes', 'no']) FROM docs ORDER BY id").fetchall()]

    threads = [threading.Thread(target=query, args=(idx,)) for idx in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == {0: want, 1: want}
