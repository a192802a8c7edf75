"""The callable class Ray Data runs in each actor, and the small actor that gathers their stats.

`ColumnActor.__init__` builds one `fw.LLM` and its engine (the model is loaded once per actor,
placed for the actor's share of the table and its own memory); `__call__` runs one Arrow batch
through the same column pipeline as pandas (NULLs, dedup, length buckets, shared prefix, typed
output) and appends the result columns to it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from flexgen_wrangle.jobs import ColumnJob, append_columns
from flexgen_wrangle.llm import LLM
from flexgen_wrangle.stats import RunStats
from udfs.ray_data.planning import (
    ActorResources,
    ShareWorkload,
    actor_memory,
    actors_on_node,
    node_resources,
)

_RECIPE = ("model_dir", "policy", "progress", "dtype", "device", "offload_dir", "use_chat")


def recipe_of(model: str | Path | LLM) -> dict[str, Any]:
    """What an actor needs to build the same `LLM` (its memory is set per actor)."""
    if isinstance(model, LLM):
        return {name: getattr(model, name) for name in _RECIPE} | {"memory": model.memory}
    return {"model_dir": Path(model), "progress": False, "memory": None}


ROW_INDEX = "__flexgen_row_index"  # added by the job (`RayJob`), dropped before the pipeline


class StatsSink:
    """One per job (`ray.remote`): each actor reports each batch's `RunStats` under the batch's
    key (`BatchKeys`). A batch retried after its actor died reports under the same key, so it is
    counted once; `retried` says how many reports were such repeats."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.batches: dict[tuple, RunStats] = {}
        self.reports = 0

    def add(self, key: tuple, stats: RunStats) -> None:
        self.reports += 1
        self.batches[key] = stats

    def retried(self) -> int:
        return self.reports - len(self.batches)

    def total(self) -> RunStats:
        total = RunStats(self.task)
        for stats in self.batches.values():
            total.merge(stats)
        return total


class BatchKeys:
    """Each batch's key in the `StatsSink`, from the batch alone: Ray's task ids cannot be used (in
    the actor's UDF thread `get_task_id()` is fixed per process, so a batch retried on the
    restarted actor came under a new id and was counted twice).

    With the job's `ROW_INDEX` column (each row's id in the job, the same on every retry of its
    batch), the key is a digest of those ids: one per batch, whichever actor runs it, however
    often. Without it (a Ray lacking `monotonically_increasing_id`), a digest of the batch's
    values and how many batches of those values this actor has run: a retry then counts once,
    but two identical batches on two actors count once too."""

    def __init__(self) -> None:
        self.seen: Counter = Counter()

    def key(self, batch: pa.Table) -> tuple:
        if ROW_INDEX in batch.column_names:
            ids = batch.column(ROW_INDEX).to_numpy().astype("<i8")
            return ("rows", hashlib.sha256(ids.tobytes()).hexdigest()[:32])
        values = json.dumps(batch.to_pylist(), default=str, sort_keys=True)
        digest = hashlib.sha256(values.encode()).hexdigest()[:32]
        self.seen[digest] += 1
        return ("values", digest, self.seen[digest])


class ColumnActor:
    """Ray Data's callable class: `map_batches(ColumnActor, fn_constructor_kwargs=...)`."""

    def __init__(self, recipe: dict[str, Any], job_spec: dict[str, Any],
                 workload: ShareWorkload | None, resources: ActorResources, sink: Any,
                 parts: Any = None) -> None:
        import torch

        torch.set_num_threads(resources.threads)
        recipe = dict(recipe)
        on_node = actors_on_node(resources, node_resources())
        memory = actor_memory(recipe.pop("memory"), on_node, recipe.get("device"),
                              recipe.get("offload_dir"))
        llm = LLM(**recipe, memory=memory)
        self.job = ColumnJob(llm=llm, **job_spec)
        if workload is not None and llm.policy == "auto":  # planned for this actor's share
            llm.prepare(workload.rows, workload.lengths, workload.gen_len, workload.shared_prefix)
        else:
            llm.engine  # noqa: B018  (built now: once per actor, not on its first batch)
        self.sink, self.parts = sink, parts
        self.keys = BatchKeys()

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.parts is not None:
            batch = self.parts.pending(batch)  # rows an earlier run wrote are skipped
        key = self.keys.key(batch) if batch.num_rows else None
        if ROW_INDEX in batch.column_names:
            batch = batch.drop_columns([ROW_INDEX])
        if key is None:
            return self._empty(batch.schema)
        arrays = self.job.run(batch)
        out = append_columns(batch, self.job, arrays)
        ray.get(self.sink.add.remote(key, self.job.llm.last_stats))
        if self.parts is not None:
            self.parts.write(out)
            return out.slice(0, 0)  # the rows are on disk; nothing to carry downstream
        return out

    def _empty(self, schema: pa.Schema) -> pa.Table:
        return self.job.output_schema(schema).empty_table()

    def __repr__(self) -> str:
        return f"ColumnActor({self.job.kind}, pid={os.getpid()})"
