"""Pure result handling: medians per system, ratios to peers and to the floor, markdown.

A run is the dict a runner printed (plus what the orchestrator adds: label, counted, cap,
command, error). Only successful runs with `counted` set enter the medians. Results from before
the dtype choice carry no dtype: they ran in bf16.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from benchmarks.dtypes import short_name

PEER_RUNNERS = ("hf", "accelerate_offload", "llamacpp", "vllm_cpu")
PEER_LABELS = ("pipeline:plain",)  # workload 3's baseline: the engine in plain FlexGen mode
SECTION_BEGIN = "<!-- BEGIN benchmarks.run: generated, do not edit by hand -->"
SECTION_END = "<!-- END benchmarks.run -->"


def ok(run: dict) -> bool:
    return not run.get("error") and bool(run.get("tokens_ok"))


def summarize(runs: list[dict], floor_s: float | None) -> list[dict]:
    """One row per system label, in first-seen order: medians over its counted runs."""
    labels = list(dict.fromkeys(run["label"] for run in runs))
    return [_summary_row(label, [r for r in runs if r["label"] == label], floor_s)
            for label in labels]


def _summary_row(label: str, runs: list[dict], floor_s: float | None) -> dict:
    counted = [run for run in runs if run.get("counted") and ok(run)]
    failures = [run for run in runs if not ok(run)]
    row: dict = {"label": label, "runner": runs[0]["runner"], "runs": len(counted),
                 "failures": len(failures)}
    if failures:
        row["failure"] = failures[-1].get("error") or "wrong token count"
    if not counted:
        return row
    tok_per_s = [run["tok_per_s"] for run in counted]
    row.update(
        batch=counted[0].get("batch"),
        tok_per_s=statistics.median(tok_per_s),
        tok_per_s_min=min(tok_per_s),
        tok_per_s_max=max(tok_per_s),
        **{key: statistics.median(run[key] for run in counted) for key in
           ("rows_per_s", "e2e_tok_per_s", "generate_s", "peak_rss_bytes", "read_bytes")},
        outputs_sha=sorted({run["outputs_sha"] for run in counted}),
    )
    if floor_s:
        row["x_floor"] = row["generate_s"] / floor_s  # >= 1: how many floors the run took
    return row


def is_peer(row: dict) -> bool:
    return (row["runner"] in PEER_RUNNERS or row["label"] in PEER_LABELS) and "tok_per_s" in row


def add_peer_ratios(rows: list[dict]) -> list[dict]:
    """row["vs"][peer label] = row tok/s / peer tok/s, for every peer with a median."""
    peers = {row["label"]: row["tok_per_s"] for row in rows if is_peer(row)}
    for row in rows:
        if "tok_per_s" in row:
            row["vs"] = {peer: row["tok_per_s"] / rate for peer, rate in peers.items()}
    return rows


def best_batch(runs: list[dict]) -> int | None:
    """The sweep's winner: the batch whose successful run had the highest tok/s."""
    good = [run for run in runs if ok(run)]
    return max(good, key=lambda run: run["tok_per_s"])["batch"] if good else None


def fmt_bytes(num: float | None) -> str:
    if num is None:
        return "-"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(num) >= size:
            return f"{num / size:.2f} {unit}"
    return f"{num:.0f} B"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(rows: list[dict]) -> str:
    peers = [row["label"] for row in rows if is_peer(row)]
    header = ["system", "batch", "runs", "tok/s (median, min-max)", "rows/s", "e2e tok/s",
              "peak RSS", "disk read", "x floor", *[f"vs {peer}" for peer in peers]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_table_cells(row, peers)) + " |")
    return "\n".join(lines)


def _table_cells(row: dict, peers: list[str]) -> list[str]:
    if "tok_per_s" not in row:
        reason = str(row.get("failure", "no successful run")).splitlines()[-1]
        reason = reason if reason.startswith("skipped:") else f"failed: {reason[:80]}"
        return [row["label"], "-", "0", reason, *["-"] * (5 + len(peers))]
    spread = f"{_fmt(row['tok_per_s'])} ({_fmt(row['tok_per_s_min'])}-{_fmt(row['tok_per_s_max'])})"
    vs = [f"{row['vs'][peer]:.2f}x" for peer in peers]
    return [row["label"], str(row.get("batch") or "-"), str(row["runs"]), spread,
            _fmt(row["rows_per_s"], 2), _fmt(row["e2e_tok_per_s"]),
            fmt_bytes(row["peak_rss_bytes"]), fmt_bytes(row["read_bytes"]),
            _fmt(row.get("x_floor"), 2), *vs]


def render_workload(result: dict) -> str:
    """A workload's section: what ran, the floor, the table, the sweeps, the commands."""
    work, floor = result["workload"], result["floor"]
    dtype = short_name(result.get("dtype", "bfloat16"))
    parts = [
        f"### Workload {work['key']}: {work['title']}",
        f"{work['rows']} prompts x {work['prompt_len']} ids -> {work['gen_len']} new; model "
        f"`{work['model']}` (weights {fmt_bytes(result['weight_bytes'])} {dtype}); memory: "
        f"{_memory_line(result['memory'])}.",
        f"Floor: {floor['seconds']:.2f} s = {floor['tok_per_s']:.1f} tok/s, bound by "
        f"{floor['bound']} (compute {floor['compute_s']:.2f} s; links "
        + ", ".join(f"{link} {sec:.2f} s" for link, sec in floor["link_s"].items())
        + f"; best split: {floor['num_blocks']} block(s)).",
        "",
        render_table(result["summary"]),
        "",
    ]
    parts.append(f"- outputs: {agreement_line(result['summary'])}")
    if "wall_s" in result:
        parts.append(f"- workload wall time: {result['wall_s'] / 60:.1f} min")
    parts += [f"- sweep {label}: {text}" for label, text in sweep_lines(result["runs"]).items()]
    parts += [f"- warning: {text}" for text in result.get("warnings", [])]
    return "\n".join(parts)


def _memory_line(memory: dict) -> str:
    if memory.get("weight_budget") is None and memory.get("cap_bytes") is None:
        return "unconstrained"
    return (f"weights {fmt_bytes(memory.get('weight_budget'))}, KV allowance "
            f"{fmt_bytes(memory.get('kv_allowance'))}, process cap "
            f"{fmt_bytes(memory.get('cap_bytes'))}")


def agreement_line(rows: list[dict]) -> str:
    """Whether the systems generated the same ids (kernels may round differently)."""
    hashes = {row["label"]: row["outputs_sha"] for row in rows if row.get("outputs_sha")}
    distinct = {sha for shas in hashes.values() for sha in shas}
    if len(distinct) <= 1:
        return f"identical ids across {len(hashes)} system(s)"
    detail = ", ".join(f"{label} {'/'.join(shas)}" for label, shas in hashes.items())
    return f"ids differ (rounding differs between kernels / prefix splits): {detail}"


def sweep_lines(runs: list[dict]) -> dict[str, str]:
    """label -> "16: 41.0, 32: 55.2, 64: OOM" for systems that swept batch sizes."""
    out: dict[str, str] = {}
    for run in runs:
        if run.get("phase") != "sweep":
            continue
        value = _fmt(run["tok_per_s"]) + " tok/s" if ok(run) else "failed"
        entry = f"batch {run['batch']}: {value}"
        out[run["label"]] = f"{out[run['label']]}, {entry}" if run["label"] in out else entry
    return out


def machine_line(machine: dict) -> str:
    """'AMD EPYC [fma avx2 avx512f avx512_bf16]': the CPU and the flags that set its matmul rate
    (results from before the flags were recorded: the name alone)."""
    flags = machine.get("cpu_flags")
    return f"{machine['cpu']} [{' '.join(flags)}]" if flags else machine["cpu"]


def render_report(results: dict) -> str:
    meta, hardware = results["meta"], results["hardware"]
    dtype = short_name(meta.get("dtype", "bfloat16"))
    matmul_dtype = short_name(hardware.get("matmul_dtype", "bfloat16"))
    parts = [
        f"Measured {meta['timestamp']} on {machine_line(meta['machine'])} "
        f"({meta['machine']['cores']} cores, {fmt_bytes(meta['machine']['ram_bytes'])} RAM"
        f"{', ' + meta['machine']['gpu'] if meta['machine'].get('gpu') else ''}); "
        + ", ".join(f"{name} {version}" for name, version in meta["versions"].items()) + ".",
        f"Command: `{meta['command']}` (git {meta['git']}).",
        f"Machine rates: {matmul_dtype} matmul {hardware['matmul_flops'] / 1e12:.2f} TFLOP/s, "
        f"fast memory {hardware['fast_bandwidth'] / 1e9:.1f} GB/s (copy, read + write), "
        f"offload link {hardware['offload_bandwidth'] / 1e9:.2f} GB/s "
        f"({hardware['offload_method']}).",
        f"Every system in {dtype} (weights and compute). tok/s = generated tokens / generate "
        "wall time (after load and a short untimed warm-up); e2e includes load and warm-up. "
        f"x floor = median generate time / floor (uncompressed {dtype}). Medians over the "
        "counted runs; peers at their sweep's best batch.",
        "",
    ]
    parts += [render_workload(result) + "\n" for result in results["workloads"]]
    return "\n".join(parts).rstrip() + "\n"


def refresh_section(path: Path, body: str) -> None:
    """Write body between the generated-section markers of path (created when missing)."""
    path = Path(path)
    section = f"{SECTION_BEGIN}\n{body.rstrip()}\n{SECTION_END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(SECTION_BEGIN) + ".*?" + re.escape(SECTION_END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
