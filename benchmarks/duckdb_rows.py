"""Rows/s of the three table paths on one table and one model: the scalar SQL function, the
`duckdb_apply` stream, and the pandas accessor (issue 12).

    .venv/bin/python -m benchmarks.duckdb_rows                       # 20,000 reviews, 3 repeats
    .venv/bin/python -m benchmarks.duckdb_rows --rows 2000 --repeats 1 --systems scalar,pandas

The table: `--rows` review rows of the demo generator (`examples.demo_data`, seed 7: not the
shipped table's), classified into the sentiment labels by the demo model (fp32 on a CPU, as
`make demo`). Each run is one process: load the model, an untimed 64-row warm-up through the
same path (it builds the engine, planned the same way for every system), then the timed call
over the whole table, its result written where the path writes it (a DuckDB table, a
DataFrame). Systems run interleaved per repeat so that a noisy machine hurts them alike.

Systems:
  scalar        CREATE TABLE out AS SELECT id, flexgen_classify(text, [...]) FROM reviews
                (a DuckDB table of one row group: one scan thread, 2,048-row calls)
  scalar-arrow  the same over an Arrow table of 2,048-row batches with SET threads=2
                (a parallel scan: calls from two threads merged into one engine run)
  apply         fw.duckdb_apply(con, "SELECT id, text FROM reviews", "classify", into="out")
  pandas        df.flexgen.classify("text", labels)
Results: benchmarks/results/duckdb-<timestamp>.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "results"
SYSTEMS = ("scalar", "scalar-arrow", "apply", "pandas")
TABLE_SEED = 7
WARMUP_ROWS = 64


def make_table(rows: int) -> Path:
    """`rows` review rows (id, text, label) as Parquet, built once per size."""
    path = CACHE / f"duckdb_rows-reviews-{rows}.parquet"
    if path.is_file():
        return path
    from examples import demo_data

    frame, total = None, rows * 3
    while frame is None or len(frame) < rows:
        table = demo_data.make_table(total, seed=TABLE_SEED)
        frame, total = table[table["kind"] == "review"], total * 2
    frame = frame.head(rows)[["text", "label"]].reset_index(drop=True)
    frame.insert(0, "id", range(len(frame)))
    CACHE.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


# -- one system, in its own process ---------------------------------------------------------


def _labels_sql(labels: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{label}'" for label in labels) + "]"


def _scalar(con: Any, llm: Any, frame: Any, labels: tuple[str, ...], arrow_batches: bool) -> list:
    import pyarrow as pa

    import flexgen_wrangle as fw

    fw.register_duckdb(con, llm)
    if arrow_batches:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        con.register("reviews", pa.Table.from_batches(table.to_batches(max_chunksize=2048)))
        con.sql("SET threads=2")
    else:
        con.from_df(frame).create("reviews")
    con.sql("CREATE TABLE out AS SELECT id, flexgen_classify(text, "
            f"{_labels_sql(labels)}) AS label FROM reviews")
    return [label for (label,) in con.sql("SELECT label FROM out ORDER BY id").fetchall()]


def _run_system(system: str, llm: Any, frame: Any, labels: tuple[str, ...]) -> list:
    import duckdb

    import flexgen_wrangle as fw

    if system == "pandas":
        out = frame.flexgen.classify("text", list(labels), llm=llm, into="predicted")
        return [None if value is None else str(value) for value in out["predicted"].tolist()]
    with duckdb.connect() as con:
        if system == "apply":
            con.from_df(frame).create("reviews")
            fw.duckdb_apply(con, "SELECT id, text FROM reviews", "classify", llm=llm,
                            column="text", labels=list(labels), output="label", into="out")
            return [label for (label,) in con.sql("SELECT label FROM out ORDER BY id").fetchall()]
        return _scalar(con, llm, frame, labels, arrow_batches=system == "scalar-arrow")


def child(system: str, table: Path) -> dict:
    import pandas as pd
    import torch

    import flexgen_wrangle as fw
    from examples import demo_data
    from udfs.merge_queue import queue_for

    frame = pd.read_parquet(table)
    labels = demo_data.SENTIMENT_LABELS
    dtype = None if torch.cuda.is_available() else torch.float32
    with fw.LLM.demo(progress=False, dtype=dtype) as llm:
        _run_system(system, llm, frame.head(WARMUP_ROWS), labels)  # builds the engine
        queue = queue_for(llm)
        calls, runs = queue.calls, queue.runs
        started = time.perf_counter()
        predicted = _run_system(system, llm, frame, labels)
        seconds = time.perf_counter() - started
        plan = repr(llm.engine.policy)
    hits = sum(guess == truth for guess, truth in zip(predicted, frame["label"], strict=True))
    return {"system": system, "rows": len(frame), "seconds": seconds,
            "rows_per_s": len(frame) / seconds, "accuracy": hits / len(frame),
            "labels_sha": hashlib.sha256(json.dumps(predicted).encode()).hexdigest()[:16],
            "udf_calls": queue.calls - calls, "engine_runs": queue.runs - runs, "plan": plan}


# -- the orchestrator -----------------------------------------------------------------------


def run_child(system: str, table: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.duckdb_rows", "--child", system,
                           "--table", str(table)], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return {"system": system, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(runs: list[dict], systems: list[str]) -> str:
    rows = {system: [run for run in runs if run["system"] == system and "error" not in run]
            for system in systems}
    pandas = statistics.median(run["rows_per_s"] for run in rows["pandas"]) if rows.get(
        "pandas") else None
    lines = ["| system | runs | rows/s (median, min-max) | vs pandas | accuracy | UDF calls "
             "/ engine runs | labels sha |", "|---|---|---|---|---|---|---|"]
    for system in systems:
        done = rows[system]
        if not done:
            lines.append(f"| {system} | 0 | failed | - | - | - | - |")
            continue
        rates = [run["rows_per_s"] for run in done]
        median = statistics.median(rates)
        ratio = f"{median / pandas:.2f}x" if pandas else "-"
        calls = f"{done[0]['udf_calls']} / {done[0]['engine_runs']}" if done[0]["udf_calls"] else "-"
        shas = ",".join(sorted({run["labels_sha"] for run in done}))
        lines.append(f"| {system} | {len(done)} | {median:.1f} ({min(rates):.1f}-{max(rates):.1f})"
                     f" | {ratio} | {done[0]['accuracy']:.1%} | {calls} | {shas} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.table)))
        return 0
    systems = args.systems.split(",")
    table, runs = make_table(args.rows), []
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for repeat in range(args.repeats):
        for system in systems:
            runs.append({**run_child(system, table), "repeat": repeat})
            print(json.dumps(runs[-1]), file=sys.stderr)
    from benchmarks.machine import machine_info

    RESULTS.mkdir(exist_ok=True)
    result = {"rows": args.rows, "systems": systems, "runs": runs, "machine": machine_info(),
              "started": started, "command": " ".join(sys.argv)}
    (RESULTS / f"duckdb-{started}.json").write_text(json.dumps(result, indent=1))
    print(report(runs, systems))
    return 0


if __name__ == "__main__":
    sys.exit(main())
