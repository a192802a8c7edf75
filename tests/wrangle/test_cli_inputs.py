"""`flexgen-wrangle run` inputs: every format gives the same output; every bad input is exit 2,
names the file or column, and leaves no output behind."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from flexgen_wrangle import cli

TEXTS = ["good", None, "bad", "good", "fine", "awful", "ok"]
TABLE = pa.table({"id": list(range(len(TEXTS))), "text": TEXTS})


def _run(model_dir, source, out, *extra):
    return cli.main(["run", str(source), "--column", "text", "--classify", "yes,no", "--model",
                     str(model_dir), "--output", str(out), "--no-progress", *extra])


def _write_jsonl(path, table):
    path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))


def _write_duckdb(path, table):
    with duckdb.connect(str(path)) as con:
        con.from_arrow(table).create("docs")


WRITERS = {
    "in.parquet": lambda path, table: pq.write_table(table, path),
    "dataset": lambda path, table: (path.mkdir(), pq.write_table(table.slice(0, 4), path / "a.parquet"),
                                    pq.write_table(table.slice(4), path / "b.parquet")),
    "in.csv": lambda path, table: pa_csv.write_csv(table, path),
    "in.tsv": lambda path, table: path.write_text(
        "id\ttext\n" + "".join(f"{row['id']}\t{row['text'] or ''}\n" for row in table.to_pylist())),
    "in.jsonl": _write_jsonl,
    "in.arrow": lambda path, table: feather.write_feather(table, path),
    "in.arrows": lambda path, table: _write_stream(path, table),
    "in.duckdb": _write_duckdb,
}


def _write_stream(path, table):
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=3)


@pytest.fixture(scope="module")
def reference(wrangle_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("reference")
    pq.write_table(TABLE, work / "in.parquet")
    assert _run(wrangle_model_dir, work / "in.parquet", work / "out.parquet", "--id-column",
                "id") == 0
    return pq.read_table(work / "out.parquet")


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_gives_the_same_rows(name, wrangle_model_dir, reference, tmp_path):
    source = tmp_path / name
    WRITERS[name](source, TABLE)
    query = ["--query", "SELECT id, text FROM docs ORDER BY id"] if name.endswith("duckdb") else []
    out = tmp_path / "out.parquet"
    assert _run(wrangle_model_dir, source, out, "--id-column", "id", *query) == 0
    assert pq.read_table(out).equals(reference)


def _bad_inputs(tmp_path):
    """(description, input path, extra args, what the error names)."""
    (tmp_path / "zero.parquet").write_bytes(b"")
    (tmp_path / "garbage.parquet").write_text("not parquet at all")
    full = tmp_path / "full.parquet"
    pq.write_table(TABLE, full)
    (tmp_path / "truncated.parquet").write_bytes(full.read_bytes()[:-20])
    pq.write_table(TABLE.slice(0, 0), tmp_path / "no_rows.parquet")
    (tmp_path / "header.csv").write_text("id,text\n")
    (tmp_path / "table.xlsx").write_text("id,text\n1,a\n")
    (tmp_path / "empty_dir").mkdir()
    _write_duckdb(tmp_path / "db.duckdb", TABLE)
    return [
        ("missing file", tmp_path / "missing.parquet", [], "missing.parquet"),
        ("0 bytes", tmp_path / "zero.parquet", [], "zero.parquet"),
        ("not parquet", tmp_path / "garbage.parquet", [], "garbage.parquet"),
        ("truncated parquet", tmp_path / "truncated.parquet", [], "truncated.parquet"),
        ("no rows", tmp_path / "no_rows.parquet", [], "no_rows.parquet"),
        ("header-only CSV", tmp_path / "header.csv", [], "header.csv"),
        ("unknown format", tmp_path / "table.xlsx", [], "table.xlsx"),
        ("directory without parquet", tmp_path / "empty_dir", [], "empty_dir"),
        ("missing column", full, ["--column", "body"], "body"),
        ("non-text column", full, ["--column", "id"], "'id'"),
        ("missing id column", full, ["--id-column", "key"], "key"),
        ("unknown model dir", full, ["--model", str(tmp_path / "no_model")], "no_model"),
        ("DuckDB without --query", tmp_path / "db.duckdb", [], "--query"),
        ("--query on Parquet", full, ["--query", "SELECT 1"], "--query"),
        ("bad SQL", tmp_path / "db.duckdb", ["--query", "SELECT * FROM nope"], "nope"),
        ("repeated labels", full, ["--classify", "a,a"], "'a'"),
        ("output is a directory", full, ["--output", str(tmp_path / "empty_dir")], "empty_dir"),
    ]


def test_bad_inputs_exit_2_naming_the_file_or_column(wrangle_model_dir, tmp_path, capsys):
    out = tmp_path / "out.parquet"
    for what, source, extra, named in _bad_inputs(tmp_path):
        argv = ["run", str(source), "--column", "text", "--classify", "yes,no", "--model",
                str(wrangle_model_dir), "--output", str(out), "--no-progress"]
        for idx in range(0, len(extra), 2):  # an extra option replaces the default one
            if extra[idx] in argv:
                argv[argv.index(extra[idx]) + 1] = extra[idx + 1]
            else:
                argv += extra[idx : idx + 2]
        assert cli.main(argv) == 2, what
        error = capsys.readouterr().err
        assert named in error and "error:" in error, (what, error)
        assert not out.exists() and not out.with_name("out.parquet.parts").exists(), what


def test_bad_schema_file_is_exit_2(wrangle_model_dir, tmp_path, capsys):
    pq.write_table(TABLE, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    (tmp_path / "schema.json").write_text("{not json")
    (tmp_path / "unknown.json").write_text(json.dumps({"n": "complex"}))
    for schema, named in (("missing.json", "missing.json"), ("schema.json", "schema.json"),
                          ("unknown.json", "complex")):
        argv = ["run", str(tmp_path / "in.parquet"), "--column", "text", "--extract",
                str(tmp_path / schema), "--model", str(wrangle_model_dir), "--output", str(out)]
        assert cli.main(argv) == 2
        assert named in capsys.readouterr().err
    assert not out.exists()


def test_bad_argument_values_are_exit_2(wrangle_model_dir, tmp_path):
    pq.write_table(TABLE, tmp_path / "in.parquet")
    for extra in (["--block-rows", "0"], ["--max-new-tokens", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            _run(wrangle_model_dir, tmp_path / "in.parquet", tmp_path / "out.parquet", *extra)
        assert exit_info.value.code == 2


def test_csv_text_columns_stay_text(wrangle_model_dir, tmp_path):
    """Digits in a text column are text (not inferred as numbers); empty fields are NULL."""
    (tmp_path / "in.csv").write_text("id,text\n1,42\n2,\n3,hello\n")
    out = tmp_path / "out.parquet"
    assert _run(wrangle_model_dir, tmp_path / "in.csv", out) == 0
    table = pq.read_table(out)
    assert table.column("text").to_pylist() == ["42", None, "hello"]
    assert table.column("text_label").is_null().to_pylist() == [False, True, False]
