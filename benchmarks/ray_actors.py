"""Ray Data (issue 14): rows/s of 1 vs 2 actors, one torch thread each, against the
single-process pandas path, and what Ray costs per batch.

    .venv/bin/python -m benchmarks.ray_actors                       # demo model, 4096 rows
    .venv/bin/python -m benchmarks.ray_actors --rows 1024 --batch-size 64 --json out.json

Every system classifies the same rows (the demo table's distinct texts, repeated; dedup off,
so each row costs the same model work) with the demo model, fp32, the engine's default policy.
The pandas path runs in this process with 1 and then 2 torch threads; Ray runs on a local
cluster started here (`ray.init(num_cpus=2)`), its actors with 1 CPU and 1 thread each, fed
from memory (`from_arrow`, one block per batch, so no read task competes for the 2 CPUs). Wall
time counts from the call to the last row back on the driver: actor start-up and model loading
included. Ray's own costs are measured apart, with the same blocks through an identity actor:
per batch (wall(B batches) - wall(1 batch)) / (B - 1), and per job what is left of wall(1 batch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from flexgen_wrangle.llm import DEMO_MODEL_DIR

LABELS = ["billing", "technical", "shipping", "account"]
TABLE = Path(__file__).resolve().parents[1] / "examples" / "demo_table.parquet"


def rows_of(count: int) -> pa.Table:
    """`count` rows: the table's distinct texts, repeated as needed (every system runs with
    dedup off, so each row costs the same model work)."""
    table = pq.read_table(TABLE, columns=["text"])
    texts = list(dict.fromkeys(table.column("text").to_pylist()))
    rows = [texts[row_idx % len(texts)] for row_idx in range(count)]
    return pa.table({"id": pa.array(range(count), pa.int64()), "text": pa.array(rows, pa.string())})


def pandas_run(table: pa.Table, threads: int) -> dict[str, Any]:
    import flexgen_wrangle as fw

    torch.set_num_threads(threads)
    began = time.perf_counter()
    with fw.LLM(DEMO_MODEL_DIR, progress=False, dtype=torch.float32, policy=None) as llm:
        out = table.to_pandas().flexgen.classify("text", LABELS, llm=llm, into="label",
                                                 dedup=False)
    wall = time.perf_counter() - began
    stats = out.attrs["flexgen_stats"]
    return {"system": f"pandas, {threads} thread(s)", "wall_s": wall,
            "rows_per_s": table.num_rows / wall, "work_rows_per_s": stats["rows_per_s"],
            "labels": out["label"].tolist()}


def ray_run(table: pa.Table, actors: int, batch_size: int) -> dict[str, Any]:
    import ray

    import flexgen_wrangle as fw

    llm = fw.LLM(DEMO_MODEL_DIR, progress=False, dtype=torch.float32, policy=None)
    began = time.perf_counter()
    out = fw.ray.classify(_blocks(table, batch_size), "text", LABELS, model=llm, into="label",
                          concurrency=actors, batch_size=batch_size, num_cpus=1, threads=1,
                          dedup=False)
    result = pa.concat_tables(ray.get(out.to_arrow_refs())).sort_by("id")
    wall = time.perf_counter() - began
    stats = fw.ray.stats(out)
    return {"system": f"Ray, {actors} actor(s) x 1 thread", "wall_s": wall,
            "rows_per_s": table.num_rows / wall,
            "work_rows_per_s": actors * stats.rows / max(stats.work_seconds, 1e-9),
            "labels": result.column("label").to_pylist()}


class _Identity:
    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


def ray_overhead(table: pa.Table, batch_size: int) -> tuple[float, float]:
    """(seconds of a job's fixed cost, seconds per batch) that Ray adds: an identity actor,
    B batches vs 1 (each job starts its own actor pool)."""
    import ray

    def wall(rows: pa.Table) -> float:
        began = time.perf_counter()
        out = _blocks(rows, batch_size).map_batches(
            _Identity, batch_format="pyarrow", batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
        ray.get(out.to_arrow_refs())
        return time.perf_counter() - began

    batches = -(-table.num_rows // batch_size)
    wall(table.slice(0, batch_size))  # warm: the worker processes exist afterwards
    one = min(wall(table.slice(0, batch_size)) for _ in range(3))
    many = min(wall(table) for _ in range(3))
    per_batch = (many - one) / max(batches - 1, 1)
    return one - per_batch, per_batch


def _blocks(table: pa.Table, rows: int) -> Any:
    import ray.data

    return ray.data.from_arrow([table.slice(start, rows)
                                for start in range(0, table.num_rows, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    table = rows_of(args.rows)
    runs = [pandas_run(table, 1), pandas_run(table, 2)]
    import ray

    temp_dir = tempfile.mkdtemp(prefix="fwray-bench-")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        runs += [ray_run(table, 1, args.batch_size), ray_run(table, 2, args.batch_size)]
        overhead = ray_overhead(table, args.batch_size)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    report(table.num_rows, args.batch_size, runs, overhead, args.json)


def report(rows: int, batch_size: int, runs: list[dict], overhead: tuple[float, float],
           path: Path | None) -> None:
    same = all(run["labels"] == runs[0]["labels"] for run in runs)
    load = os.getloadavg()[0]  # the machine is shared: what else ran, as a 1-minute load
    print(f"{rows} rows, batch {batch_size}; every system's labels equal: {same}; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    print("| system | wall s | rows/s (wall) | rows/s (model work) |\n|---|---|---|---|")
    for run in runs:
        print(f"| {run['system']} | {run['wall_s']:.1f} | {run['rows_per_s']:.1f} | "
              f"{run['work_rows_per_s']:.1f} |")
    print(f"Ray's overhead (identity actor): {overhead[0]:.2f} s per job (actor pool start), "
          f"{overhead[1] * 1e3:.1f} ms per batch")
    if path is not None:
        slim = [{key: value for key, value in run.items() if key != "labels"} for run in runs]
        path.write_text(json.dumps({"rows": rows, "batch_size": batch_size, "runs": slim,
                                    "labels_equal": same, "overhead_per_job_s": overhead[0],
                                    "overhead_per_batch_s": overhead[1],
                                    "load_average": load},
                                   indent=1))


if __name__ == "__main__":
    main()
