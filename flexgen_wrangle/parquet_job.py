"""`flexgen-wrangle run`: a table file in, a Parquet file out, written in blocks and resumable.

Each block of `block_rows` input rows becomes one part file in `<output>.parts/`, written to a
temporary name and renamed, so a killed run leaves only whole parts. `--resume` skips the
blocks whose part exists (a manifest makes sure the parts came from the same job); at the end
the parts are joined into the output file and the parts directory is removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from flexgen_wrangle.jobs import ColumnJob, append_columns, blocks
from flexgen_wrangle.stats import RunStats

logger = logging.getLogger(__name__)


def open_table(path: Path) -> pa.RecordBatchReader:
    """A lazy reader over a Parquet, CSV or Arrow IPC file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    if suffix == ".csv":
        return pa_csv.open_csv(path)
    if suffix in (".arrow", ".feather", ".ipc"):
        return pa.RecordBatchReader.from_batches(*_ipc_batches(path))
    parquet = pq.ParquetFile(path)
    return pa.RecordBatchReader.from_batches(parquet.schema_arrow, parquet.iter_batches())


def _ipc_batches(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    source = pa.ipc.open_file(path)
    return source.schema, (source.get_batch(idx) for idx in range(source.num_record_batches))


class PartsDir:
    """The staging directory of one output: a manifest and numbered part files."""

    def __init__(self, output: Path, manifest: dict[str, Any]) -> None:
        self.path = output.with_name(output.name + ".parts")
        self.manifest = manifest

    def prepare(self, resume: bool) -> None:
        manifest_path = self.path / "manifest.json"
        if resume and manifest_path.is_file():
            found = json.loads(manifest_path.read_text())
            if found != self.manifest:
                raise ValueError(f"{self.path} holds parts of a different job ({found}); "
                                 "remove it, or run without --resume to start over")
            return
        if self.path.exists():
            logger.info("removing the earlier partial output %s", self.path)
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        manifest_path.write_text(json.dumps(self.manifest, indent=1))

    def part(self, block_idx: int) -> Path:
        return self.path / f"part-{block_idx:06d}.parquet"

    def write(self, block_idx: int, batch: pa.RecordBatch) -> None:
        temporary = self.path / f".part-{block_idx:06d}.tmp"
        pq.write_table(pa.Table.from_batches([batch]), temporary)
        os.replace(temporary, self.part(block_idx))

    def join(self, output: Path, schema: pa.Schema) -> int:
        """Concatenate the parts into `output` (atomically); returns the number of rows."""
        temporary, rows = output.with_name(output.name + ".tmp"), 0
        with pq.ParquetWriter(temporary, schema) as writer:
            for part in sorted(self.path.glob("part-*.parquet")):
                table = pq.read_table(part, schema=schema)
                writer.write_table(table)
                rows += table.num_rows
        os.replace(temporary, output)
        shutil.rmtree(self.path)
        return rows


def run_file(job: ColumnJob, input_path: Path, output: Path, block_rows: int,
             resume: bool = False) -> RunStats:
    """Run `job` over the input file into `output`; returns the stats of the blocks computed."""
    reader = open_table(input_path)
    job.check(reader.schema)  # before any model work
    schema = job.output_schema(reader.schema)
    parts = PartsDir(output, _manifest(job, input_path, block_rows))
    parts.prepare(resume)
    total = RunStats(job.task.name)
    for block_idx, batch in enumerate(blocks(reader, block_rows)):
        if parts.part(block_idx).is_file():
            continue
        arrays = job.run(batch)
        total.merge(job.llm.last_stats)
        parts.write(block_idx, append_columns(batch, job, arrays))
    parts.join(output, schema)
    return total


def _manifest(job: ColumnJob, input_path: Path, block_rows: int) -> dict[str, Any]:
    stat = input_path.stat()
    return {"input": str(input_path.resolve()), "input_bytes": stat.st_size,
            "input_mtime_ns": stat.st_mtime_ns, "block_rows": block_rows,
            "model": str(Path(job.llm.model_dir).resolve()), "job": job.describe()}
