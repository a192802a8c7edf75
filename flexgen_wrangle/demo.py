"""`flexgen-wrangle demo`: the demo model over the demo table, through the pandas accessor and
then the same tasks in DuckDB SQL.

Reviews and tickets are classified, invoices extracted; the table's known answers give the
accuracy. The labels and the schema come from `examples.demo_data`, the table's generator.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from flexgen_wrangle.llm import DEMO_MODEL_DIR, LLM

DEMO_TABLE = DEMO_MODEL_DIR.parent / "demo_table.parquet"


def _demo_data() -> Any:
    try:
        from examples import demo_data
    except ImportError:
        raise FileNotFoundError("examples.demo_data is not importable; run the demo from the "
                                "repository root (make demo)") from None
    return demo_data


def load_table(path: Path, rows: int) -> Any:
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"the demo table is not at {path}; make it with "
                                "`python -m examples.demo_data --out examples/demo_table.parquet`")
    table = pd.read_parquet(path)
    return table.head(rows) if rows else table


def classify_kind(table: Any, kind: str, labels: tuple[str, ...], llm: LLM) -> tuple[Any, Any]:
    rows = table[table["kind"] == kind]
    out = rows.flexgen.classify("text", labels=list(labels), llm=llm, into="predicted")
    return out, llm.last_stats


def extract_fields_match(out: Any, fields: list[str]) -> Any:
    """Per-row: every extracted field equals the known answer (totals to the cent)."""
    hits = None
    for field in fields:
        predicted, known = out[f"pred_{field}"], out[field]
        if field == "total":
            match = [not _missing(p) and math.isclose(p, k, abs_tol=0.005)
                     for p, k in zip(predicted, known, strict=True)]
        else:
            match = [not _missing(p) and str(p) == str(k) for p, k in zip(predicted, known,
                                                                          strict=True)]
        hits = match if hits is None else [a and b for a, b in zip(hits, match, strict=True)]
    return hits


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def _report(name: str, out: Any, hits: list[bool], stats: Any, columns: list[str]) -> None:
    print(f"\n== {name}: {len(out)} rows ==")
    print(out[columns].head(5).to_string(max_colwidth=48))
    accuracy = sum(hits) / len(hits) if hits else 0.0
    print(f"accuracy {accuracy:.1%}  |  {stats.summary()}")


def run_demo(rows: int = 600, progress: bool = True) -> int:
    demo_data = _demo_data()
    table = load_table(DEMO_TABLE, rows)
    # fp32 on a CPU: the demo model is small, and its accuracy was measured in fp32
    dtype = None if torch.cuda.is_available() else torch.float32
    with LLM.demo(progress=progress, dtype=dtype) as llm:
        for kind, labels in (("review", demo_data.SENTIMENT_LABELS),
                             ("ticket", demo_data.CATEGORY_LABELS)):
            out, stats = classify_kind(table, kind, labels, llm)
            hits = (out["predicted"] == out["label"]).fillna(False).tolist()
            _report(f"classify {kind}s", out, hits, stats,
                    ["text", "label", "predicted", "predicted_probability"])
        invoices = table[table["kind"] == "invoice"]
        schema = dict(demo_data.INVOICE_SCHEMA)
        out = invoices.flexgen.extract("text", schema, llm=llm, prefix="pred_")
        hits = extract_fields_match(out, list(schema))
        _report("extract invoices", out, hits, llm.last_stats,
                ["text", *[f"pred_{field}" for field in schema]])
        run_duckdb(table, demo_data, llm)
        print(f"\nplan: {llm.plan_text}")
    return 0


def _sql_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


def _timed(con: Any, sql: str) -> tuple[Any, float]:
    started = time.perf_counter()
    frame = con.sql(sql).df()
    return frame, time.perf_counter() - started


def run_duckdb(table: Any, demo_data: Any, llm: LLM) -> None:
    """The same classification and extraction as SQL over the demo table (rows/s: the query's
    wall time, the engine already built)."""
    import duckdb

    from udfs.duckdb_udf import register_duckdb, register_duckdb_extractor

    con = duckdb.connect()
    con.register("demo", table)
    functions = register_duckdb(con, llm)
    for kind, labels in (("review", demo_data.SENTIMENT_LABELS),
                         ("ticket", demo_data.CATEGORY_LABELS)):
        sql = (f"SELECT text, label, flexgen_classify(text, {_sql_list(labels)}) AS predicted "
               f"FROM demo WHERE kind = '{kind}' ORDER BY id")
        out, seconds = _timed(con, sql)
        hits = (out["predicted"] == out["label"]).fillna(False).tolist()
        _report_sql(f"DuckDB: classify {kind}s", sql, out, hits, seconds)
    schema = dict(demo_data.INVOICE_SCHEMA)
    extractor = register_duckdb_extractor(con, "extract_invoice", schema, llm)
    con.sql("CREATE TEMP TABLE invoices AS SELECT * FROM demo WHERE kind = 'invoice'")
    sql = "SELECT id, text, extract_invoice(text) AS invoice FROM invoices ORDER BY id"
    started = time.perf_counter()
    con.sql(f"CREATE TEMP TABLE extracted AS {sql}")
    seconds = time.perf_counter() - started
    fields = ", ".join(f"invoice.{field}{'::VARCHAR' if kind == 'date' else ''} AS pred_{field}"
                       for field, kind in schema.items())  # dates compared as ISO text
    out = con.sql(f"SELECT i.*, {fields} FROM extracted e JOIN invoices i USING (id) "
                  "ORDER BY id").df()
    _report_sql("DuckDB: extract invoices", sql, out, extract_fields_match(out, list(schema)),
                seconds)
    print(con.sql("SELECT typeof(invoice) AS invoice_type, invoice.total, typeof(invoice.total) "
                  "AS total_type, invoice.date FROM extracted ORDER BY id LIMIT 3"))
    calls = functions.queue.calls
    print(f"{extractor.stats['extract_invoice'].summary()}  |  {calls} calls, "
          f"{functions.queue.runs} engine runs")


def _report_sql(name: str, sql: str, out: Any, hits: list[bool], seconds: float) -> None:
    print(f"\n== {name}: {len(out)} rows ==\n{sql}")
    accuracy = sum(hits) / len(hits) if hits else 0.0
    print(f"accuracy {accuracy:.1%}  |  {len(out) / seconds:.1f} rows/s (query wall time)")
