"""Soak: a long column through the pandas accessor and through `flexgen-wrangle run` on the demo
model, with the process's RSS and its progress sampled every few seconds (issue 16).

    nice -n 10 .venv/bin/python -m benchmarks.soak                       # 200,000 rows, both paths
    .venv/bin/python -m benchmarks.soak --rows 20000 --paths cli --sample-s 1

The table: `--rows` rows of the demo generator (`examples.demo_data`, seed 7: reviews, tickets
and invoices), classified into the sentiment labels. Each path runs in its own process, started
fresh: `pandas` is one `df.flexgen.classify` call over the whole column (its progress read from
the call's progress bar), `cli` is `flexgen-wrangle run` over a Parquet file (its progress read
from the part files it has written). Per path: the RSS slope after warm-up (least squares, MB per
10,000 rows), the throughput drift (rows/s of the last third of the rows after warm-up over the
first third, minus one) and the checks of the output: every row, in input order, and the same
labels on both paths and on a sample of rows classified one by one.
Results: benchmarks/results/soak-<timestamp>.json and a summary on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LABELS = ("positive", "negative", "neutral")
TABLE_SEED = 7
WARMUP_SHARE = 0.1  # of the rows: engine build, first window; left out of slope and drift
ORDER_SAMPLE = 64  # rows classified one by one to check each path's order


def write_table(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from examples.demo_data import make_records

    records = make_records(rows, seed=TABLE_SEED)
    table = pa.table({"id": [record["id"] for record in records],
                      "text": [record["text"] for record in records]})
    pq.write_table(table, path, row_group_size=16384)


class Sampler:
    """(seconds, RSS MB, rows done) of `process` every `period_s`, from a thread of its own;
    `stop(total_rows)` adds the end: all rows, at the time the run ended."""

    def __init__(self, process: psutil.Process, rows_done: Any, period_s: float) -> None:
        self.samples: list[dict[str, float]] = []
        self._process, self._rows_done, self._period_s = process, rows_done, period_s
        self._stop = threading.Event()
        self._begin = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rows = 0
        while not self._stop.is_set():
            try:
                rss = self._process.memory_info().rss / 2**20
            except psutil.Error:
                break
            rows = max(rows, self._rows_done())  # the CLI's parts vanish at its commit
            self.samples.append({"s": time.perf_counter() - self._begin, "rss_mb": rss,
                                 "rows": rows})
            self._stop.wait(self._period_s)

    def stop(self, total_rows: int) -> list[dict[str, float]]:
        end = time.perf_counter() - self._begin
        self._stop.set()
        self._thread.join()
        last = self.samples[-1]["rss_mb"] if self.samples else 0.0
        self.samples.append({"s": end, "rss_mb": last, "rows": total_rows, "end": True})
        return self.samples


def tqdm_rows() -> int:
    """Rows done by the live progress bar of this process (0 before it exists)."""
    from tqdm.std import tqdm

    bars = list(getattr(tqdm, "_instances", ()))
    return max((getattr(bar, "n", 0) for bar in bars), default=0)  # a bar being built has no n


def pandas_child(table_path: Path, result_path: Path, samples_path: Path, period_s: float) -> None:
    """One accessor call over the whole column, sampled from a thread of this process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import flexgen_wrangle as fw

    frame = pq.read_table(table_path).to_pandas()
    with fw.LLM.demo(progress=True) as llm:
        sampler = Sampler(psutil.Process(), tqdm_rows, period_s)
        out = frame.flexgen.classify("text", labels=list(LABELS), llm=llm, into="sentiment")
        samples = sampler.stop(len(frame))
    result = pa.table({"id": pa.array(out["id"]), "sentiment": pa.array(out["sentiment"])})
    pq.write_table(result, result_path)
    samples_path.write_text(json.dumps({"samples": samples,
                                        "stats": out.attrs["flexgen_stats"]}, default=str))


def run_pandas(table_path: Path, work: Path, period_s: float) -> dict[str, Any]:
    result_path, samples_path = work / "pandas.parquet", work / "pandas-samples.json"
    command = [sys.executable, "-m", "benchmarks.soak", "--child-pandas", str(table_path),
               str(result_path), str(samples_path), "--sample-s", str(period_s)]
    begin = time.perf_counter()
    with open(work / "pandas.log", "w") as log:
        subprocess.run(command, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    found = json.loads(samples_path.read_text())
    return {"path": "pandas", "command": " ".join(command), "wall_s": time.perf_counter() - begin,
            "samples": found["samples"], "stats": found["stats"], "output": str(result_path)}


def run_cli(table_path: Path, work: Path, period_s: float, block_rows: int,
            rows: int) -> dict[str, Any]:
    output = work / "cli.parquet"
    command = [str(Path(sys.executable).with_name("flexgen-wrangle")), "run", str(table_path),
               "--column", "text", "--classify", ",".join(LABELS), "--into", "sentiment",
               "--id-column", "id", "--model", str(ROOT / "examples" / "demo_model"),
               "--output", str(output), "--block-rows", str(block_rows), "--no-progress"]
    parts = output.with_name(output.name + ".parts")
    begin = time.perf_counter()
    with open(work / "cli.log", "w") as log:
        child = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

        def rows_done() -> int:
            return block_rows * len(list(parts.glob("part-*.parquet"))) if parts.is_dir() else 0

        sampler = Sampler(psutil.Process(child.pid), rows_done, period_s)
        code = child.wait()
        samples = sampler.stop(rows)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}; see {work / 'cli.log'}")
    return {"path": "cli", "command": " ".join(command), "wall_s": time.perf_counter() - begin,
            "samples": samples, "output": str(output)}


def rss_slope_mb_per_10k(samples: list[dict], total_rows: int) -> float:
    """Least-squares slope of RSS over rows done, after warm-up, in MB per 10,000 rows."""
    kept = [s for s in samples if WARMUP_SHARE * total_rows <= s["rows"] and not s.get("end")]
    if len(kept) < 3:
        return float("nan")
    mean_rows = sum(s["rows"] for s in kept) / len(kept)
    mean_rss = sum(s["rss_mb"] for s in kept) / len(kept)
    spread = sum((s["rows"] - mean_rows) ** 2 for s in kept)
    if not spread:
        return float("nan")
    cov = sum((s["rows"] - mean_rows) * (s["rss_mb"] - mean_rss) for s in kept)
    return cov / spread * 10_000


def late_growth_share(samples: list[dict], total_rows: int) -> float:
    """Of the RSS high-water mark's growth after warm-up, the share in the last half of the
    rows: about 0.5 for a steady leak, 0 when memory levelled off by the middle."""
    def high_water(rows: float) -> float:
        return max((s["rss_mb"] for s in samples if s["rows"] <= rows and not s.get("end")),
                   default=0.0)

    warm, middle, end = (high_water(WARMUP_SHARE * total_rows), high_water(total_rows / 2),
                         high_water(total_rows))
    return (end - middle) / (end - warm) if end > warm else 0.0


def seconds_at(samples: list[dict], rows: float) -> float:
    """When the run reached `rows` (linear between the samples around it)."""
    for before, after in itertools.pairwise(samples):
        if before["rows"] <= rows <= after["rows"] and after["rows"] > before["rows"]:
            share = (rows - before["rows"]) / (after["rows"] - before["rows"])
            return before["s"] + share * (after["s"] - before["s"])
    return float("nan")


def throughput_drift(samples: list[dict], total_rows: int) -> dict[str, float]:
    """Rows/s over the first and the last third of the rows after warm-up, and their drift."""
    start = WARMUP_SHARE * total_rows
    third = (total_rows - start) / 3
    marks = [start, start + third, start + 2 * third, total_rows]
    times = [seconds_at(samples, mark) for mark in marks]
    first = third / (times[1] - times[0])
    last = (marks[3] - marks[2]) / (times[3] - times[2])
    return {"first_rows_per_s": first, "last_rows_per_s": last, "drift": last / first - 1}


def check_outputs(results: list[dict], table_path: Path) -> dict[str, Any]:
    """Every row, in input order, on each path; labels equal across paths and to single rows."""
    import random

    import pyarrow.parquet as pq

    import flexgen_wrangle as fw

    table = pq.read_table(table_path)
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    labels = {}
    checks: dict[str, Any] = {}
    for result in results:
        out = pq.read_table(result["output"])
        labels[result["path"]] = out.column("sentiment").to_pylist()
        checks[result["path"]] = {"rows": out.num_rows, "ids_in_order": out.column("id").to_pylist() == ids,
                                  "null_labels": sum(label is None for label in labels[result["path"]])}
    picks = sorted(random.Random(0).sample(range(len(ids)), min(ORDER_SAMPLE, len(ids))))
    with fw.LLM.demo(progress=False) as llm:
        alone = [fw.classify([texts[row]], list(LABELS), llm=llm)[0].as_py()["label"] for row in picks]
    for path, found in labels.items():
        matches = [found[row] == label for row, label in zip(picks, alone, strict=True)]
        checks[path]["sample_matches"] = sum(matches)
        checks[path]["sample_rows"] = len(picks)
    if len(labels) == 2:
        left, right = labels.values()
        checks["label_mismatches_between_paths"] = sum(a != b for a, b in zip(left, right, strict=True))
    return checks


def summarize(result: dict[str, Any], rows: int) -> dict[str, Any]:
    samples = result["samples"]
    rss = [s["rss_mb"] for s in samples if s["rows"] >= WARMUP_SHARE * rows]
    return {"path": result["path"], "command": result["command"], "wall_s": round(result["wall_s"], 1),
            "rows_per_s": rows / result["wall_s"], "samples": len(samples),
            "rss_slope_mb_per_10k_rows": rss_slope_mb_per_10k(samples, rows),
            "late_growth_share": late_growth_share(samples, rows),
            "rss_after_warmup_mb": [min(rss, default=0), max(rss, default=0)],
            "peak_rss_mb": max((s["rss_mb"] for s in samples), default=0),
            **throughput_drift(samples, rows)}


def soak(rows: int, paths: list[str], period_s: float, block_rows: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    table_path = work / "table.parquet"
    write_table(table_path, rows)
    results = []
    if "pandas" in paths:
        results.append(run_pandas(table_path, work, period_s))
    if "cli" in paths:
        results.append(run_cli(table_path, work, period_s, block_rows, rows))
    return {"rows": rows, "sample_s": period_s, "block_rows": block_rows,
            "summary": [summarize(result, rows) for result in results],
            "checks": check_outputs(results, table_path),
            "runs": [{k: v for k, v in result.items() if k != "output"} for result in results]}


def machine() -> dict[str, Any]:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines()
                  if line.startswith("model name")), "")
    return {"cpu": model, "cores": os.cpu_count(), "amx": " amx" in flags,
            "avx512": " avx512f" in flags, "load_avg": os.getloadavg()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--paths", default="pandas,cli")
    parser.add_argument("--sample-s", type=float, default=3.0)
    parser.add_argument("--block-rows", type=int, default=4096)
    parser.add_argument("--work", type=Path, default=Path("/tmp/flexgen-soak"))
    parser.add_argument("--child-pandas", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_pandas:
        pandas_child(*args.child_pandas, args.sample_s)
        return
    found = soak(args.rows, args.paths.split(","), args.sample_s, args.block_rows, args.work)
    found["machine"] = machine()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(found, indent=1, default=str))
    print(json.dumps({"summary": found["summary"], "checks": found["checks"]}, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
