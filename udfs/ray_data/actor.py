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


class StatsSink:
    """One per job (`ray.remote`): each actor reports each batch's `RunStats`. A batch retried
    after an actor died reports under the same key, so it is counted once."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.batches: dict[tuple, RunStats] = {}

    def add(self, key: tuple, stats: RunStats) -> None:
        self.batches[key] = stats

    def total(self) -> RunStats:
        total = RunStats(self.task)
        for stats in self.batches.values():
            total.merge(stats)
        return total


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
        self.seen: Counter = Counter()

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.parts is not None:
            batch = self.parts.pending(batch)  # rows an earlier run wrote are skipped
        if batch.num_rows == 0:
            return self._empty(batch.schema)
        arrays = self.job.run(batch)
        out = append_columns(batch, self.job, arrays)
        ray.get(self.sink.add.remote(self._key(batch), self.job.llm.last_stats))
        if self.parts is not None:
            self.parts.write(out)
            return out.slice(0, 0)  # the rows are on disk; nothing to carry downstream
        return out

    def _empty(self, schema: pa.Schema) -> pa.Table:
        return self.job.output_schema(schema).empty_table()

    def _key(self, batch: pa.Table) -> tuple:
        """(Ray task, the batch's input values, how many such batches this task saw): the same
        on a retry of the task, different for different batches."""
        values = json.dumps(batch.select(self.job.input_columns).to_pylist(), default=str)
        digest = hashlib.sha256(values.encode()).hexdigest()[:16]
        task_id = ray.get_runtime_context().get_task_id()
        self.seen[(task_id, digest)] += 1
        return (task_id, digest, self.seen[(task_id, digest)])

    def __repr__(self) -> str:
        return f"ColumnActor({self.job.kind}, pid={os.getpid()})"
