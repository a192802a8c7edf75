"""`flexgen-wrangle`: run a task over a table file, show a plan, or run the demo.

    flexgen-wrangle run reviews.parquet --column text --classify positive,negative \\
        --model DIR --output out.parquet [--resume]
    flexgen-wrangle run invoices.parquet --column text --extract schema.json --model DIR --output out.parquet
    flexgen-wrangle run docs.parquet --generate "Summarize: {body}" --model DIR --output out.parquet
    flexgen-wrangle plan --model DIR --rows 100000 --prompt-len 64 --gen-len 16 [--memory device=2GiB]
    flexgen-wrangle demo
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from flexgen_wrangle.errors import WrangleError

DEFAULT_BLOCK_ROWS = 4096


def parse_memory(text: str | None) -> dict[str, str] | None:
    """"device=2GiB,host=8GiB" -> {"device": "2GiB", "host": "8GiB"}."""
    if not text:
        return None
    budgets = {}
    for item in text.split(","):
        tier, sep, size = item.partition("=")
        if not sep or not tier.strip() or not size.strip():
            raise argparse.ArgumentTypeError(f"--memory takes tier=size pairs, got {item!r}")
        budgets[tier.strip()] = size.strip()
    return budgets


def _run_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="run a task over a column; write Parquet")
    run.add_argument("input", type=Path, help="a .parquet, .csv or .arrow file")
    run.add_argument("--column", help="the input text column (classify, extract)")
    task = run.add_mutually_exclusive_group(required=True)
    task.add_argument("--classify", metavar="A,B,C", help="comma-separated labels")
    task.add_argument("--extract", metavar="SCHEMA.json", type=Path,
                      help="field->type dict, JSON schema")
    task.add_argument("--generate", metavar="TEMPLATE", help='e.g. "Summarize: {body}"')
    run.add_argument("--model", required=True, type=Path)
    run.add_argument("--output", required=True, type=Path)
    run.add_argument("--resume", action="store_true", help="keep the blocks already written")
    run.add_argument("--into", help="output column (classify, generate)")
    run.add_argument("--prefix", default="", help="prefix of the extracted columns")
    run.add_argument("--instruction")
    run.add_argument("--max-new-tokens", type=int)
    run.add_argument("--block-rows", type=int, default=DEFAULT_BLOCK_ROWS)
    run.add_argument("--memory", type=parse_memory, help="device=2GiB,host=8GiB,disk=100GiB")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="run on a Ray cluster (ray.init(ADDRESS); alone or \"local\": start one here)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexgen-wrangle", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    _run_parser(commands)
    plan = commands.add_parser("plan", help="print the placement plan for a workload")
    plan.add_argument("--model", required=True, type=Path)
    plan.add_argument("--rows", type=int, required=True)
    plan.add_argument("--prompt-len", type=int, required=True)
    plan.add_argument("--gen-len", type=int, required=True)
    plan.add_argument("--memory", type=parse_memory)
    demo = commands.add_parser("demo", help="classify + extract over the demo table")
    demo.add_argument("--rows", type=int, default=600, help="rows of the table (0: all)")
    demo.add_argument("--no-progress", action="store_true")
    return parser


def _task_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.classify is not None:
        labels = [label.strip() for label in args.classify.split(",")]
        return {"kind": "classify", "column": args.column, "into": args.into, "labels": labels,
                "instruction": args.instruction}
    if args.extract is not None:
        schema = json.loads(args.extract.read_text())
        extra = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
        return {"kind": "extract", "column": args.column, "prefix": args.prefix,
                "schema": schema, "instruction": args.instruction, **extra}
    extra = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    return {"kind": "generate", "template": args.generate, "into": args.into or "generated",
            **extra}


def cmd_run(args: argparse.Namespace) -> int:
    from flexgen_wrangle.jobs import ColumnJob
    from flexgen_wrangle.llm import LLM
    from flexgen_wrangle.parquet_job import run_file

    with LLM(args.model, memory=args.memory, progress=not args.no_progress) as llm:
        spec = _task_args(args)
        job = ColumnJob(spec.pop("kind"), llm, **spec)
        stats = run_file(job, args.input, args.output, args.block_rows, args.resume)
        print(f"wrote {args.output}")
        print(stats.summary())
        if stats.rows:
            print(f"plan: {stats.plan}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        from engine import Workload, plan
    except ImportError:
        print("the planner (engine.plan, engine.Workload) is not available in this build",
              file=sys.stderr)
        return 2
    workload = Workload(rows=args.rows, prompt_len=args.prompt_len, gen_len=args.gen_len)
    result = plan(args.model, workload, memory=args.memory)
    print(f"policy: {result.policy}")
    print(f"estimated tokens/s: {result.tokens_per_s:.1f}")
    print(f"peak bytes: {result.peak_bytes}")
    print(f"why: {result.why}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run" and args.ray is not None:
            from udfs.ray_data.cli import run_on_ray  # the `ray` extra

            return run_on_ray(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "plan":
            return cmd_plan(args)
        from flexgen_wrangle.demo import run_demo

        return run_demo(rows=args.rows, progress=not args.no_progress)
    except (WrangleError, FileNotFoundError, ValueError) as err:
        print(f"flexgen-wrangle: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
