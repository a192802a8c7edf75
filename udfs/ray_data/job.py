"""`RayJob`: a column task over a Ray dataset, validated on the driver before any model work.

The driver builds the `ColumnJob` (labels, schema, template checked), checks the dataset's
schema, samples its first rows for the planner, and hands each actor the job's recipe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.data

from flexgen_wrangle.jobs import ColumnJob
from flexgen_wrangle.llm import LLM
from udfs.ray_data import resume as resuming
from udfs.ray_data.actor import ROW_INDEX, ColumnActor, StatsSink, recipe_of
from udfs.ray_data.planning import (
    RESERVED_CPUS,
    SAMPLE_ROWS,
    actor_memory,
    actor_resources,
    actors_on_node,
    batch_rows,
    node_resources,
    sample_workload,
)

logger = logging.getLogger(__name__)


class RayJob:
    """kind: "classify" | "extract" | "generate"; `task` holds the task's arguments and the
    pipeline options, as for `ColumnJob`. Ray options: concurrency (actors; default one per
    node), batch_size (default: the planner's block), num_cpus / num_gpus / threads per actor,
    memory per actor, rows (the table's rows, when Ray cannot count them cheaply), max_restarts,
    max_task_retries; resumable runs: id_column, output, resume ("auto" | "ray" | "parts")."""

    def __init__(self, ds: ray.data.Dataset, kind: str, model: str | Path | LLM, *,
                 concurrency: int | None = None, batch_size: int | None = None,
                 num_cpus: float | None = None, num_gpus: float | None = None,
                 threads: int | None = None, memory: dict[str, Any] | None = None,
                 rows: int | None = None, max_restarts: int = -1, max_task_retries: int = -1,
                 id_column: str | None = None, output: str | Path | None = None,
                 resume: str = "auto", **task: Any) -> None:
        self.recipe = recipe_of(model) | ({"memory": memory} if memory else {})
        llm = model if isinstance(model, LLM) else LLM(model, progress=False)
        self.job_spec = {"kind": kind, **task}
        self.job = ColumnJob(llm=llm, **self.job_spec)  # labels, schema, template: checked
        self.ds, self.id_column = ds, id_column
        self.output = Path(output) if output is not None else None
        self.backend = self._backend(resume)
        if not ray.is_initialized():
            ray.init()
        reserved = RESERVED_CPUS + (1 if self.backend == "ray" else 0)  # its filter actor
        self.resources = actor_resources(concurrency, num_cpus, num_gpus, threads, reserved)
        self.remote_args = {name: value for name, value in  # Ray Data's defaults are -1 both
                            (("max_restarts", max_restarts), ("max_task_retries", max_task_retries))
                            if value != -1}
        self._check_schema()
        self.workload = sample_workload(self.job, _sample(ds), rows or _cheap_count(ds),
                                        self.resources.actors, self.job.options.get("dedup", True))
        self.batch_size = batch_size or self._planned_batch_size()

    def _backend(self, resume: str) -> str | None:
        if (self.id_column is None) != (self.output is None):
            raise ValueError("a resumable run needs both id_column (the rows' unique ids) and "
                             "output (the directory the rows are written to)")
        return resuming.choose_backend(resume, self.ds) if self.output is not None else None

    def _check_schema(self) -> None:
        schema = self.ds.schema()
        base = getattr(schema, "base_schema", None)
        if isinstance(base, pa.Schema):
            self.job.check(base)
            if ROW_INDEX in base.names:
                raise ValueError(f"{ROW_INDEX!r} is reserved for the job's own row index")
            if self.id_column is not None and self.id_column not in base.names:
                raise ValueError(f"id_column {self.id_column!r} is not a column; columns are "
                                 f"{base.names}")

    def _planned_batch_size(self) -> int:
        on_node = actors_on_node(self.resources, node_resources())
        memory = actor_memory(self.recipe.get("memory"), on_node, self.recipe.get("device"),
                              self.recipe.get("offload_dir"))
        return batch_rows(self.job.llm, self.workload, memory)

    # running ---------------------------------------------------------------------------------
    def dataset(self) -> ray.data.Dataset:
        """The lazy result; with `output`, the job runs now and this reads what it wrote."""
        sink = self.sink = ray.remote(num_cpus=0)(StatsSink).remote(self.job.task.name)
        if self.output is None:
            return _tagged(self._mapped(sink), sink)
        manifest = {"job": self.job.describe(), "model": str(Path(self.recipe["model_dir"])
                                                             .resolve()),
                    "id_column": self.id_column, "backend": self.backend}
        resuming.prepare_output(self.output, manifest)
        if self.backend == "ray":
            mapped = resuming.with_checkpoint(self._mapped(sink), self.id_column, self.output)
            mapped.write_parquet(str(self.output))
        else:
            self._mapped(sink, self._parts()).materialize()
        return _tagged(self._read_output(), sink)

    def _mapped(self, sink: Any, parts: Any = None) -> ray.data.Dataset:
        resources = self.resources
        return _with_row_index(self.ds).map_batches(
            ColumnActor, batch_format="pyarrow", batch_size=self.batch_size,
            compute=ray.data.ActorPoolStrategy(size=resources.actors),
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus or None,
            fn_constructor_kwargs={"recipe": self.recipe, "job_spec": self.job_spec,
                                   "workload": self.workload, "resources": resources,
                                   "sink": sink, "parts": parts},
            **self.remote_args)

    def _parts(self) -> resuming.Parts:
        id_type = self.ds.schema().base_schema.field(self.id_column).type
        done = resuming.done_ids(self.output, self.id_column, id_type)
        if len(done):
            logger.info("resuming: %d rows of %s already written", len(done), self.output)
        return resuming.Parts(self.output, self.id_column, done)

    def _read_output(self) -> ray.data.Dataset:
        if not any(self.output.glob("*.parquet")):  # an empty input wrote nothing
            schema = self.job.output_schema(self.ds.schema().base_schema)
            return ray.data.from_arrow(schema.empty_table())
        return ray.data.read_parquet(str(self.output), file_extensions=["parquet"])


def _with_row_index(ds: ray.data.Dataset) -> ray.data.Dataset:
    """`ds` with `ROW_INDEX`, each row's id in the job, for the actors' stats keys: Ray Data's
    `monotonically_increasing_id` (its task's index and the row's place in it) is fixed when the
    task is first submitted, so a batch retried on a restarted actor has the same ids. A Ray
    without it: `ds` as is (the actors then key batches by their values)."""
    try:
        from ray.data.expressions import monotonically_increasing_id
    except ImportError:
        return ds
    return ds.with_column(ROW_INDEX, monotonically_increasing_id())


def _tagged(ds: ray.data.Dataset, sink: Any) -> ray.data.Dataset:
    ds._flexgen_stats = sink  # read by fw.ray.stats
    return ds


def _sample(ds: ray.data.Dataset) -> pa.Table:
    try:
        return ds.take_batch(SAMPLE_ROWS, batch_format="pyarrow")
    except ValueError:  # an empty dataset
        return ds.schema().base_schema.empty_table()


def _cheap_count(ds: ray.data.Dataset) -> int | None:
    """The rows, when Ray knows them without running anything (Parquet metadata, in memory)."""
    try:
        return ds._meta_count()
    except Exception:  # a private helper of Ray Data: the planner then plans for its minimum
        return None
