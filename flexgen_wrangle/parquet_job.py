"""`flexgen-wrangle run`: a table in, a Parquet file out, block by block, resumable.

The input (`flexgen_wrangle.inputs`) is cut into blocks of `block_rows` rows; each block's rows
and results become one part in `<output>.parts/` (`flexgen_wrangle.parts`), and at the end the
parts are joined, in input order, into the output. A rerun with `resume=True` keeps every sound
part, recomputes the rest, and refuses the parts of a different job (another input, model,
task, arguments or block size), saying what differs. The engine placement chosen for the first
computed block is pinned in the parts directory and reused by a resumed run, so every block is
computed as an uninterrupted run computes it: the output is the same, row for row.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from flexgen_wrangle.errors import ColumnNotFoundError
from flexgen_wrangle.inputs import TableInput
from flexgen_wrangle.jobs import ColumnJob, append_columns, blocks
from flexgen_wrangle.parts import PartsDir, digest, rows_digest
from flexgen_wrangle.stats import RunStats

logger = logging.getLogger(__name__)
MANIFEST_VERSION = 2
HASHED_BYTES = 64 << 20  # model files up to this size are identified by their content


@dataclass
class JobResult:
    state: str  # how the run found the output: fresh, resumed, joined or finished
    stats: RunStats  # of the blocks this run computed
    rows: int = 0  # rows of the output
    blocks: int = 0
    computed_blocks: int = 0


def output_schema(job: ColumnJob, schema: pa.Schema, id_column: str | None) -> pa.Schema:
    """All input columns and the results, or (`id_column`) the id and the results."""
    if id_column is None:
        return job.output_schema(schema)
    return pa.schema([schema.field(id_column), *job.output_fields])


def check_columns(job: ColumnJob, schema: pa.Schema, id_column: str | None) -> None:
    """The job's input columns exist and hold text; the id column exists and is no result."""
    job.check(schema)
    if id_column is None:
        return
    if id_column not in schema.names:
        raise ColumnNotFoundError(f"no such column (--id-column); columns are {schema.names}",
                                  column=id_column)
    if id_column in job.output_names:
        raise ValueError(f"--id-column {id_column!r} is also the name of a result column")


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """Each file's name and sha256 (16 hex; size and mtime for a file over `HASHED_BYTES`)."""
    files = [(entry, entry.stat()) for entry in sorted(model_dir.iterdir()) if entry.is_file()]
    return {"path": str(model_dir.resolve()),
            "files": [[entry.name, digest(entry.read_bytes())] if stat.st_size <= HASHED_BYTES
                      else [entry.name, stat.st_size, stat.st_mtime_ns] for entry, stat in files]}


def manifest(job: ColumnJob, source: TableInput, block_rows: int,
             id_column: str | None) -> dict[str, Any]:
    """What the job computes: a resume must match every entry."""
    return {"version": MANIFEST_VERSION, "input": source.fingerprint,
            "model": model_fingerprint(Path(job.llm.model_dir)), "job": job.describe(),
            "block_rows": block_rows, "id_column": id_column}


def run_file(job: ColumnJob, source: TableInput, output: Path, block_rows: int,
             resume: bool = False, id_column: str | None = None,
             progress: bool = False) -> JobResult:
    """Run `job` over `source` into `output` (columns already checked: `check_columns`)."""
    schema = output_schema(job, source.reader.schema, id_column)
    parts = PartsDir(output, manifest(job, source, block_rows, id_column))
    result = JobResult(parts.start(resume), RunStats(job.task.name))
    if result.state in ("joined", "finished") and not _same_rows(source, block_rows, parts):
        logger.warning("%s: the input's rows are not those it was computed from; computing it "
                       "again", output)
        source, result.state = source.reopen(), parts.start(resume=False)
    if result.state in ("fresh", "resumed"):
        parts.join(schema, _compute_blocks(job, source, parts, block_rows, id_column, result,
                                           progress))
    if result.state != "finished":
        parts.commit()
    result.rows = pq.read_metadata(output).num_rows
    return result


def _same_rows(source: TableInput, block_rows: int, parts: PartsDir) -> bool:
    """Whether the input's blocks are those the joined or finished output was computed from."""
    found = [rows_digest(block) for block in blocks(source.reader, block_rows)]
    return found == parts.done_blocks


def _compute_blocks(job: ColumnJob, source: TableInput, parts: PartsDir, block_rows: int,
                    id_column: str | None, result: JobResult, progress: bool) -> list[str]:
    """Every block computed or kept, in order; returns their rows digests."""
    pinned = parts.pinned_policy()
    if pinned is not None:  # as the first run placed the engine, before it is built
        job.llm.policy = policy_from_dict(pinned)
    with tqdm(total=source.rows, unit="rows", desc=f"flexgen {job.kind}",
              disable=not progress) as bar:
        done, digests = 0, []  # rows shown one block late: the last block's by close(), once
        for block_idx, block in enumerate(blocks(source.reader, block_rows)):
            bar.update(done)
            done = block.num_rows
            digests.append(rows_digest(block))
            if not parts.kept(block_idx, digests[-1]):
                parts.write(block_idx, digests[-1], _compute(job, block, id_column, result.stats))
                result.computed_blocks += 1
                if pinned is None:
                    pinned = dataclasses.asdict(job.llm.engine.policy)
                    parts.pin_policy(pinned)
            result.blocks += 1
        bar.n += done
    return digests


def _compute(job: ColumnJob, block: pa.RecordBatch, id_column: str | None,
             stats: RunStats) -> pa.RecordBatch:
    arrays = job.run(block)
    stats.merge(job.llm.last_stats)
    if id_column is None:
        return append_columns(block, job, arrays)
    return pa.RecordBatch.from_arrays([block.column(id_column), *arrays],
                                      schema=output_schema(job, block.schema, id_column))


def policy_from_dict(data: dict[str, Any]) -> Any:
    """An `engine.Policy` from `dataclasses.asdict` of one."""
    from engine import Placement, Policy

    return Policy(**{name: Placement(**value) if isinstance(value, dict) else value
                     for name, value in data.items()})
