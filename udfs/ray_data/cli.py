"""`flexgen-wrangle run ... --ray [ADDRESS]`: the same job on a Ray cluster.

`--ray ADDRESS` connects with `ray.init(ADDRESS)`; `--ray` alone (or `--ray local`) starts a
cluster on this machine. The input is read by Ray Data (Parquet file or directory, CSV, JSON
lines), the job runs on the actors, and the output is one Parquet file, as without `--ray`:
every column in input order, or with `--id-column` that column and the results, in id order.
`--resume` needs `--id-column` (the rows' unique ids): the rows are staged in `<output>.ray/`
(see `udfs.ray_data.resume`) and a re-run after a killed driver skips the rows already there.
The batch size is the planner's (`--block-rows` is not used); a file Ray reads as one block
runs on one actor.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
import ray.data

from flexgen_wrangle.errors import WrangleError
from flexgen_wrangle.llm import LLM
from udfs.ray_data.job import RayJob
from udfs.ray_data.resume import checkpoint_dir

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def read_input(path: Path) -> ray.data.Dataset:
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return ray.data.read_csv(str(path), **_tsv(suffix))
    if suffix in (".json", ".jsonl"):
        return ray.data.read_json(str(path), lines=True)
    if path.is_dir() or suffix == ".parquet":
        return ray.data.read_parquet(str(path))
    raise ValueError(f"--ray reads Parquet, CSV, TSV or JSON lines; got {path}")


def _tsv(suffix: str) -> dict[str, Any]:
    if suffix != ".tsv":
        return {}
    import pyarrow.csv as pa_csv

    return {"parse_options": pa_csv.ParseOptions(delimiter="\t")}


def connect(address: str) -> None:
    if not ray.is_initialized():
        ray.init(address="local" if address == "local" else address)


def run_on_ray(args: argparse.Namespace) -> int:
    from flexgen_wrangle.cli import _task_args

    id_column = getattr(args, "id_column", None)
    staging = args.output.with_name(args.output.name + ".ray")
    try:
        if args.resume and id_column is None:
            raise ValueError("--ray --resume needs --id-column (the rows' unique ids)")
        spec = _task_args(args)
        llm = LLM(args.model, memory=args.memory, progress=False,
                  allow_compression=getattr(args, "allow_compression", False))
        connect(args.ray)
        ds = read_input(args.input)
        if not args.resume:
            _remove(staging)
        resumable = {"id_column": id_column, "output": staging} if id_column else {}
        job = RayJob(ds, spec.pop("kind"), llm, **spec, **resumable)
    except (WrangleError, ValueError, OSError) as err:
        return _fail(err, EXIT_BAD_INPUT)
    try:
        out = job.dataset()
        if id_column is not None:  # as without --ray: the ids and the results, in id order
            out = out.select_columns([id_column, *job.job.output_names]).sort(id_column)
        rows = write_file(out, args.output, preserve_order=True)
    except Exception as err:  # the cluster, the engine, the disk: whatever stopped the run
        return _fail(err, EXIT_FAILED, " (with --id-column, rerun with --resume)")
    _remove(staging)
    stats = ray.get(job.sink.total.remote())
    print(f"wrote {args.output}: {rows} rows")
    print(stats.summary())
    return EXIT_DONE


def write_file(ds: ray.data.Dataset, output: Path, preserve_order: bool) -> int:
    """Stream `ds` into one Parquet file (written under a temporary name, then renamed)."""
    ds.context.execution_options.preserve_order = preserve_order
    temporary, rows = output.with_name(output.name + ".tmp"), 0
    writer = None
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if writer is None:
                writer = pq.ParquetWriter(temporary, batch.schema)
            writer.write_table(batch)
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no rows at all: an empty file with the dataset's schema
        pq.write_table(ds.schema().base_schema.empty_table(), temporary)
    temporary.replace(output)
    return rows


def _remove(staging: Path) -> None:
    for path in (staging, checkpoint_dir(staging)):
        if path.exists():
            shutil.rmtree(path)


def _fail(err: BaseException, code: int, hint: str = "") -> int:
    print(f"flexgen-wrangle: error: {err}{hint}", file=sys.stderr)
    return code
