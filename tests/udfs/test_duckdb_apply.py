"""`fw.duckdb_apply`: a query's rows streamed through the pipeline into a table (or a relation),
the same results as the pandas accessor, and memory bounded whatever the table's size."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pyarrow as pa
import pytest

import flexgen_wrangle as fw

WORDS = ["good", "bad", "fine", "awful", "ok", "great", "poor", "nice"]
ROWS = 600


def _docs() -> pa.Table:
    texts = [None if row % 9 == 4 else f"{WORDS[row % 8]} {WORDS[(row // 8) % 8]}"
             for row in range(ROWS)]
    return pa.table({"id": list(range(ROWS)), "body": texts, "n": [row * 2 for row in range(ROWS)]})


@pytest.fixture
def con():
    with duckdb.connect() as connection:
        connection.from_arrow(_docs()).create("docs")
        yield connection


def test_apply_into_a_table(con, wrangle_llm):
    relation = fw.duckdb_apply(con, "SELECT id, body FROM docs WHERE n >= 0 ORDER BY id", "classify",
                               llm=wrangle_llm, column="body", labels=["yes", "no"],
                               output="answer", block_rows=128, into="results")
    assert relation.columns == ["id", "body", "answer", "answer_probability"]
    assert con.sql("SELECT count(*) FROM results").fetchall() == [(ROWS,)]
    want = fw.classify(_docs().column("body"), ["yes", "no"], llm=wrangle_llm).to_pylist()
    rows = con.sql("SELECT id, answer, answer_probability FROM results ORDER BY id").fetchall()
    assert [row[1] for row in rows] == [value and value["label"] for value in want]
    for (_, _, probability), value in zip(rows, want, strict=True):
        assert probability == (value and pytest.approx(value["probability"], rel=1e-6))
    assert wrangle_llm.last_stats.rows == ROWS


def test_apply_extract_gives_typed_columns(con, wrangle_llm):
    schema = {"n": "int", "when": "date", "tags": "list[string]"}
    fw.duckdb_apply(con, "SELECT id, body FROM docs", "extract", llm=wrangle_llm, column="body",
                    schema=schema, prefix="x_", into="fields")
    types = dict(con.sql("SELECT column_name, data_type FROM information_schema.columns "
                         "WHERE table_name = 'fields'").fetchall())
    assert types == {"id": "BIGINT", "body": "VARCHAR", "x_n": "BIGINT", "x_when": "DATE",
                     "x_tags": "VARCHAR[]"}
    direct = fw.extract(_docs().column("body"), schema, llm=wrangle_llm).to_pylist()
    got = con.sql("SELECT x_n, x_when, x_tags FROM fields ORDER BY id").fetchall()
    assert [None if row is None else (row["n"], row["when"], row["tags"]) for row in direct] == [
        None if row == (None, None, None) else row for row in got]


def test_apply_returns_a_relation_without_into(con, wrangle_llm):
    relation = fw.duckdb_apply(con, "SELECT id, body FROM docs", "generate", llm=wrangle_llm,
                               template="Say {body}", output="said", max_new_tokens=2)
    rows = relation.aggregate("count(*), count(said)").fetchall()
    assert rows == [(ROWS, sum(text is not None for text in _docs().column("body").to_pylist()))]


def test_apply_validates_before_any_model_work(con, wrangle_model_dir):
    llm = fw.LLM(wrangle_model_dir, progress=False)
    with pytest.raises(KeyError, match="text"):
        fw.duckdb_apply(con, "SELECT id, body FROM docs", "classify", llm=llm, column="text",
                        labels=["a", "b"], into="nope")
    with pytest.raises(ValueError, match="text column"):
        fw.duckdb_apply(con, "SELECT id, body FROM docs", "classify", llm=llm, column="id",
                        labels=["a", "b"], into="nope")
    assert llm._engine is None
    assert "nope" not in [name for (name,) in con.sql("SHOW TABLES").fetchall()]


MEMORY_CHILD = """
import json, resource, sys, threading, time, torch, duckdb, flexgen_wrangle as fw
from engine import Policy
model, database, into = sys.argv[1], sys.argv[2], sys.argv[3] or None
rows, row_bytes, block_rows = 50000, 12288, 1024
llm = fw.LLM(model, progress=False, dtype=torch.float32,
             policy=Policy(gpu_batch_size=64, num_gpu_batches=4))
query = (f"SELECT i AS id, 'word ' || (i % 20) AS body, repeat(md5(i::varchar), {row_bytes // 32}) "
         f"AS payload FROM range({rows}) r(i)")
con = duckdb.connect(database)
con.sql("SET memory_limit='64MB'")
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
fw.duckdb_apply(con, query.replace(str(rows), '100'), 'classify', llm=llm, column='body',
                labels=['yes', 'no'], block_rows=block_rows).aggregate('count(*)').fetchall()
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base, samples, done, peak_before = rss(), [], threading.Event(), peak()
def sample():
    while not done.is_set():
        samples.append(rss())
        time.sleep(0.005)
sampler = threading.Thread(target=sample)
sampler.start()
relation = fw.duckdb_apply(con, query, 'classify', llm=llm, column='body', labels=['yes', 'no'],
                           block_rows=block_rows, into=into)
counted = relation.aggregate('count(*), count(body_label), sum(length(payload))').fetchall()[0]
done.set()
sampler.join()
peak_after = peak()  # counts only if the run set a new peak (not start-up's, e.g. probes)
engine_bytes = sum(llm.engine.stats.peak_bytes.values())  # the engine's own, on its budgets
print(json.dumps({'rows': counted[0], 'labels': counted[1], 'bytes': counted[2],
                  'growth': max([*samples, peak_after if peak_after > peak_before else 0]) - base,
                  'block_bytes': block_rows * row_bytes, 'engine_bytes': engine_bytes,
                  'startup_peak': peak_before - base}))
"""


def _memory_growth(model_dir, database: str, into: str) -> dict:
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(model_dir), database, into],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_bound(measured: dict) -> None:
    """The bound: peak RSS grows by at most DuckDB's memory_limit (64 MiB here), plus 4 blocks
    of rows, plus the engine's peak (its tiers' ledger), plus 128 MiB of allocator slack
    (measured: 60-200 MiB of growth in all here, whatever the rows' size); and by less than half
    the rows' bytes: they are never all held."""
    mib = 1 << 20
    assert measured["rows"] == measured["labels"] == 50000, measured
    assert measured["bytes"] == 50000 * 12288
    bound = 64 * mib + 4 * measured["block_bytes"] + measured["engine_bytes"] + 128 * mib
    assert measured["growth"] <= bound, measured
    assert measured["growth"] < measured["bytes"] / 2, measured["growth"] / mib


def test_apply_memory_is_bounded_on_50000_rows(wrangle_model_dir):
    """50,000 rows of 12 KiB (586 MiB) streamed through the pipeline to a relation."""
    _check_bound(_memory_growth(wrangle_model_dir, ":memory:", ""))


@pytest.mark.slow
def test_apply_into_a_database_file_memory_is_bounded(wrangle_model_dir, tmp_path):
    """The same rows written into a table of a database file (586 MiB in, as much stored)."""
    _check_bound(_memory_growth(wrangle_model_dir, str(tmp_path / "out.duckdb"), "results"))
