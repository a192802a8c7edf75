"""Resumable runs: a job with `id_column` and `output` writes Parquet files under `output`; when
its driver is killed, the same call again skips the rows already written. Two backends:

- "ray": Ray Data's own `CheckpointConfig` (`ray.data.checkpoint`, new in late 2025, in the
  Ray 2.60 this was built with; older Rays lack it). Its read
  filters out the ids already checkpointed, its write commits each file with its ids (two-phase:
  a file without a committed checkpoint is removed on the next run). The checkpoint lives beside
  the output, in `<output>.checkpoint/`. It needs a dataset read from files (`read_parquet`, ...)
  and, on a re-run, one CPU and 1 GiB for its filter actor.
- "parts": our own part files keyed by id, as the CLI does. Each finished batch is written by its
  actor as `part-<sha256 of its ids>.parquet` (temporary name, then renamed: whole or absent); a
  re-run reads the ids of the parts there and each actor drops those rows before any model work.
  A retried batch rewrites the same name. Any dataset works; ids must be unique.

"auto" takes "ray" when the installed Ray has `CheckpointConfig` and the dataset is read from
files, "parts" otherwise. Either way `output` holds `_flexgen_job.json` (what the job computes: a
re-run of a different job into the same directory is refused) and the data's Parquet files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "ray", "parts")
MANIFEST = "_flexgen_job.json"
_READ_OPS = ("Read", "ReadFiles")  # Ray Data's logical read operators (file reads)


def checkpoint_config_class() -> Any:
    """Ray Data's `CheckpointConfig`, or None in a Ray without it."""
    try:
        from ray.data.checkpoint import CheckpointConfig
    except ImportError:
        return None
    return CheckpointConfig


def reads_files(ds: Any) -> bool:
    """Every path of the dataset's plan starts at a file read (what Ray's checkpoint needs)."""
    def from_read(op: Any) -> bool:
        if type(op).__name__ in _READ_OPS:
            return True
        inputs = getattr(op, "input_dependencies", [])
        return bool(inputs) and all(from_read(child) for child in inputs)

    plan = getattr(ds, "_logical_plan", None)
    return plan is not None and from_read(plan.dag)


def choose_backend(resume: str, ds: Any) -> str:
    if resume not in BACKENDS:
        raise ValueError(f"resume must be one of {BACKENDS}, got {resume!r}")
    if resume == "ray" and checkpoint_config_class() is None:
        raise ValueError("resume='ray' needs Ray Data's CheckpointConfig (ray.data.checkpoint), "
                         "which this Ray lacks; use resume='parts'")
    if resume == "ray" and not reads_files(ds):
        raise ValueError("resume='ray' needs a dataset read from files (ray.data.read_parquet, "
                         "...); use resume='parts'")
    if resume != "auto":
        return resume
    return "ray" if checkpoint_config_class() is not None and reads_files(ds) else "parts"


def checkpoint_dir(output: Path) -> Path:
    return output.with_name(output.name + ".checkpoint")


def prepare_output(output: Path, manifest: dict[str, Any]) -> None:
    """Create `output` with the job's manifest, or check that it holds the same job."""
    path = output / MANIFEST
    if path.is_file():
        found = json.loads(path.read_text())
        if found != manifest:
            raise ValueError(f"{output} holds the output of a different job ({found}); remove "
                             "it or write to another directory")
        return
    output.mkdir(parents=True, exist_ok=True)
    if any(output.glob("*.parquet")):
        raise ValueError(f"{output} holds Parquet files but no {MANIFEST}: not a flexgen job's "
                         "output; remove it or write to another directory")
    _write_atomic(path, json.dumps(manifest, indent=1, sort_keys=True).encode())


def with_checkpoint(ds: Any, id_column: str, output: Path) -> Any:
    """`ds` with its own DataContext that checkpoints by `id_column` (the input's is untouched)."""
    import ray.data

    config = checkpoint_config_class()(id_column=id_column,
                                       checkpoint_path=str(checkpoint_dir(output)),
                                       delete_checkpoint_on_success=False)
    own = ray.data.Dataset.copy(ds, _deep_copy=True)
    own.context.checkpoint_config = config
    return own


class Parts:
    """The "parts" backend inside an actor: which rows are pending, and writing finished ones."""

    def __init__(self, output: str | Path, id_column: str, done: pa.Array) -> None:
        self.output, self.id_column, self.done = Path(output), id_column, done

    def pending(self, batch: pa.Table) -> pa.Table:
        if len(self.done) == 0:
            return batch
        written = pc.is_in(batch.column(self.id_column), value_set=self.done)
        return batch.filter(pc.invert(pc.fill_null(written, False)))

    def write(self, table: pa.Table) -> None:
        ids = table.column(self.id_column).combine_chunks()
        name = hashlib.sha256(_ipc_bytes(pa.table({"id": ids}))).hexdigest()[:32]
        temporary = self.output / f".part-{name}-{uuid.uuid4().hex}.tmp"
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, self.output / f"part-{name}.parquet")


def done_ids(output: Path, id_column: str, id_type: pa.DataType) -> pa.Array:
    """The ids in the whole part files under `output` (stale temporaries are removed)."""
    for stale in output.glob(".part-*.tmp"):
        stale.unlink(missing_ok=True)
    chunks = []
    for part in sorted(output.glob("part-*.parquet")):
        try:
            chunks.append(pq.read_table(part, columns=[id_column]).column(id_column))
        except (OSError, pa.ArrowInvalid) as err:  # never a whole file (renamed in): remove it
            logger.warning("removing the unreadable part %s (%s)", part, err)
            part.unlink()
    if not chunks:
        return pa.array([], type=id_type)
    return pa.chunked_array(chunks).combine_chunks().cast(id_type)


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
