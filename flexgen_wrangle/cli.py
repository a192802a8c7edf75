"""`flexgen-wrangle`: run a task over a table file, show a plan, or run the demo.

    flexgen-wrangle run reviews.parquet --column text --classify positive,negative \\
        --model DIR --output out.parquet [--resume]
    flexgen-wrangle run invoices.csv --column text --extract schema.json --model DIR --output out.parquet
    flexgen-wrangle run docs.parquet --generate "Summarize: {body}" --model DIR --output out.parquet
    flexgen-wrangle run shop.duckdb --query "SELECT id, body FROM docs ORDER BY id" --column body \\
        --classify a,b --id-column id --model DIR --output out.parquet
    flexgen-wrangle plan --model DIR --rows 100000 --prompt-len 64 --gen-len 16 [--memory device=2GiB]
    flexgen-wrangle demo

`run` exits 0 when the output is complete, 2 on bad arguments or input (before any model work,
nothing written), 1 on a failure while running (rerun the same command with --resume).
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
EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
RUN_EPILOG = ("exit codes: 0 done; 2 bad arguments or input (nothing written); 1 failed while "
              "running: the same command with --resume continues where it stopped")


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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _run_parser(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="run a task over a column; write Parquet (resumable)", epilog=RUN_EPILOG,
        description="Run classify, extract or generate over a table's column and write the rows "
                    "with their results to Parquet, in input order, block by block.")
    run.add_argument("input", type=Path, help="Parquet file or directory, .csv, .tsv, .jsonl, "
                     ".arrow (IPC file or stream), or a DuckDB database (with --query)")
    run.add_argument("--query", help='a DuckDB database\'s rows, e.g. "SELECT id, body FROM docs '
                     'ORDER BY id" (a deterministic order, for --resume)')
    run.add_argument("--column", help="the input text column (classify, extract)")
    task = run.add_mutually_exclusive_group(required=True)
    task.add_argument("--classify", metavar="A,B,C", help="comma-separated labels")
    task.add_argument("--extract", metavar="SCHEMA.json", type=Path,
                      help="field->type dict, JSON schema")
    task.add_argument("--generate", metavar="TEMPLATE", help='e.g. "Summarize: {body}"')
    run.add_argument("--model", required=True, type=Path, help="a local model directory")
    run.add_argument("--output", required=True, type=Path, help="the Parquet file to write")
    run.add_argument("--resume", action="store_true",
                     help="keep what an earlier run of the same command wrote")
    run.add_argument("--id-column", help="keep only this column and the results")
    run.add_argument("--into", help="output column (classify, generate)")
    run.add_argument("--prefix", default="", help="prefix of the extracted columns")
    run.add_argument("--instruction")
    run.add_argument("--max-new-tokens", type=positive_int)
    run.add_argument("--block-rows", type=positive_int, default=DEFAULT_BLOCK_ROWS,
                     help=f"rows per block and per part file (default {DEFAULT_BLOCK_ROWS})")
    run.add_argument("--memory", type=parse_memory, help="device=2GiB,host=8GiB,disk=100GiB")
    run.add_argument("--allow-compression", action="store_true",
                     help="the planner may choose 4-bit weights / KV cache (outputs change)")
    run.add_argument("--stages", type=positive_int, default=1,
                     help="cut the model into N pipeline stages, one process each (--memory "
                     "is then each stage's budget)")
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
    plan.add_argument("--allow-compression", action="store_true",
                      help="4-bit weights / KV cache may be chosen (outputs change)")
    demo = commands.add_parser("demo", help="classify + extract over the demo table")
    demo.add_argument("--rows", type=int, default=600, help="rows of the table (0: all)")
    demo.add_argument("--no-progress", action="store_true")
    return parser


def _task_args(args: argparse.Namespace) -> dict[str, Any]:
    extra = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    if args.classify is not None:
        labels = [label.strip() for label in args.classify.split(",")]
        return {"kind": "classify", "column": args.column, "into": args.into, "labels": labels,
                "instruction": args.instruction}
    if args.extract is not None:
        return {"kind": "extract", "column": args.column, "prefix": args.prefix,
                "schema": _read_schema(args.extract), "instruction": args.instruction, **extra}
    return {"kind": "generate", "template": args.generate, "into": args.into or "generated",
            **extra}


def _read_schema(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"--extract {path}: cannot be read ({err.strerror})") from None
    except ValueError as err:
        raise ValueError(f"--extract {path}: not JSON ({err})") from None


def _check_output(args: argparse.Namespace) -> None:
    output = args.output
    if output.is_dir():
        raise ValueError(f"--output {output} is a directory; give a file name")
    if not output.parent.is_dir():
        raise ValueError(f"--output {output}: the directory {output.parent} does not exist")
    if output.resolve() == args.input.resolve():
        raise ValueError(f"--output {output} is the input")


def _fail(err: BaseException, code: int, hint: str = "") -> int:
    print(f"flexgen-wrangle: error: {err}{hint}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    """Everything is checked before any model work (exit 2); then the blocks run (exit 1)."""
    from flexgen_wrangle.inputs import InputError, open_input
    from flexgen_wrangle.jobs import ColumnJob
    from flexgen_wrangle.llm import LLM
    from flexgen_wrangle.parquet_job import check_columns, run_file
    from flexgen_wrangle.parts import ResumeError

    try:
        spec = _task_args(args)
        _check_output(args)
        llm = LLM(args.model, memory=args.memory, progress=False,
                  allow_compression=args.allow_compression, stages=args.stages)
    except (WrangleError, ValueError, OSError) as err:
        return _fail(err, EXIT_BAD_INPUT)
    with llm:
        try:
            job = ColumnJob(spec.pop("kind"), llm, progress=False, **spec)
            source = open_input(args.input, args.query, job.input_columns)
            check_columns(job, source.reader.schema, args.id_column)
        except (WrangleError, ValueError, OSError) as err:
            return _fail(err, EXIT_BAD_INPUT)
        try:
            result = run_file(job, source, args.output, args.block_rows, args.resume,
                              args.id_column, progress=not args.no_progress)
        except (InputError, ResumeError) as err:
            return _fail(err, EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            return _fail("interrupted", EXIT_INTERRUPTED, "; the same command with --resume "
                         "continues")
        except MemoryError as err:  # a budget (MemoryBudgetError) or the allocator
            return _fail(err, EXIT_FAILED, "; give it more memory (--memory tier=size, a larger "
                         "cgroup limit) and run the same command with --resume")
        except Exception as err:  # the engine, the disk: whatever stopped the run
            return _fail(err, EXIT_FAILED, "; the same command with --resume continues")
    _report(args.output, result)
    return EXIT_DONE


def _report(output: Path, result: Any) -> None:
    if result.state == "finished":
        print(f"{output} is already complete ({result.rows} rows); nothing to do")
        return
    if result.state == "joined":
        print(f"wrote {output}: {result.rows} rows (the earlier run had computed every block)")
        return
    kept = result.blocks - result.computed_blocks
    print(f"wrote {output}: {result.rows} rows, {result.computed_blocks} of {result.blocks} "
          f"blocks computed" + (f", {kept} kept from the earlier run" if kept else ""))
    if result.computed_blocks:
        print(result.stats.summary())
        print(f"plan: {result.stats.plan}")


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        from engine import Workload, plan
    except ImportError:
        print("the planner (engine.plan, engine.Workload) is not available in this build",
              file=sys.stderr)
        return 2
    workload = Workload(rows=args.rows, prompt_len=args.prompt_len, gen_len=args.gen_len)
    result = plan(args.model, workload, memory=args.memory,
                  allow_compression=args.allow_compression)
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
    except MemoryError as err:  # `plan`: not one row fits the budgets; the numbers say why
        print(f"flexgen-wrangle: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
