"""What each actor is given: its CPUs and threads, its memory, and the workload its engine is
planned for (its share of the table), plus the batch size the driver asks Ray Data for.

The driver samples the first rows of the dataset and tokenizes them exactly as the pipeline will
(the same prompt frame and shared prefix), so the planner sees the table's real prompt lengths.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray

from flexgen_wrangle.columns import as_text_array
from flexgen_wrangle.jobs import ColumnJob
from flexgen_wrangle.llm import MIN_PLANNED_ROWS
from flexgen_wrangle.pipeline import Distinct, _groups

SAMPLE_ROWS = 256  # rows tokenized on the driver to learn the prompt lengths
FALLBACK_BATCH_ROWS = 256  # rows per Ray batch when no plan says better (a fixed policy, no rows)
RESERVED_CPUS = 1  # left to Ray Data's own read and write tasks, so the actors cannot starve them


@dataclass(frozen=True)
class ShareWorkload:
    """One actor's share of the table, as `LLM.prepare` takes it."""

    rows: int
    lengths: list[int]  # prompt tokens per sampled row, after the shared prefix
    gen_len: int
    shared_prefix: int

    def as_engine_workload(self) -> Any:
        from engine import Workload

        return Workload(rows=max(self.rows, MIN_PLANNED_ROWS), prompt_len=dict(Counter(self.lengths)),
                        gen_len=self.gen_len, shared_prefix=self.shared_prefix)


@dataclass(frozen=True)
class ActorResources:
    actors: int
    num_cpus: float
    num_gpus: float
    threads: int  # torch threads in each actor


def actor_resources(concurrency: int | None, num_cpus: float | None, num_gpus: float | None,
                    threads: int | None, reserved_cpus: int = RESERVED_CPUS) -> ActorResources:
    """Defaults from the cluster: one actor per node (per `num_gpus` GPUs when asked for GPUs),
    the CPUs not reserved for Ray Data's tasks shared among the actors, one torch thread per
    whole CPU."""
    cluster = ray.cluster_resources()
    gpus = float(num_gpus or 0)
    if concurrency is None:
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        concurrency = int(cluster.get("GPU", 0) // gpus) if gpus else max(1, nodes)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 actor, got {concurrency}")
    if num_cpus is None:
        num_cpus = max(0.0, float(cluster.get("CPU", 1)) - reserved_cpus) / concurrency
    threads = threads or max(1, math.floor(num_cpus))
    return ActorResources(concurrency, float(num_cpus), gpus, threads)


def actors_on_node(resources: ActorResources, node_resources: dict[str, float]) -> int:
    """How many of the job's actors this node can hold (its share of the memory is 1/that)."""
    fit = resources.actors
    if resources.num_cpus > 0:
        fit = min(fit, math.floor(node_resources.get("CPU", 0) / resources.num_cpus))
    if resources.num_gpus > 0:
        fit = min(fit, math.floor(node_resources.get("GPU", 0) / resources.num_gpus))
    return max(1, fit)


def node_resources(node_id: str | None = None) -> dict[str, float]:
    """The total resources of a node (this process's node by default)."""
    node_id = node_id or ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return dict(node.get("Resources", {}))
    return {}


def actor_memory(requested: dict[str, Any] | None, actors: int, device: str | None,
                 offload_dir: Any) -> dict[str, Any]:
    """Budgets per tier for one actor: what was asked for, else what this node has free (with
    the engine's headroom) divided by the actors on it."""
    from engine.defaults import default_budgets, resolve_device

    free = default_budgets(resolve_device(device), offload_dir, None)
    return {**{tier: int(size / actors) for tier, size in free.items()}, **(requested or {})}


def sample_workload(job: ColumnJob, sample: pa.Table, rows: int | None,
                    actors: int, dedup: bool = True) -> ShareWorkload | None:
    """The workload of one actor's share, from a sample of the table (None: nothing to run)."""
    texts = job.template.render({name: sample.column(name) for name in job.input_columns}) \
        if job.template is not None else sample.column(job.column)
    distinct = Distinct.of(as_text_array(texts, job.column).to_pylist(), dedup)
    if not distinct.texts:
        return None
    llm, task = job.llm, job.task
    share_prefix = job.options.get("share_prefix", True)
    groups = _groups(llm, task, distinct, range(len(distinct.texts)), share_prefix)
    if not groups:  # every sampled row is too long for the model: nothing to plan for
        return None
    lengths = [len(ids) for group in groups for _, ids in group.items]
    prefix_len = len(groups[0].prefix or [])
    room = llm.max_positions - prefix_len - max(lengths)
    gen_len = max(1, min(max(task.min_new_positions, task.max_new_tokens), room))
    share = math.ceil((rows or len(distinct.texts)) / actors)
    return ShareWorkload(max(1, share), lengths, gen_len, prefix_len)


def batch_rows(llm: Any, workload: ShareWorkload | None, memory: dict[str, Any]) -> int:
    """The planner's block size for one actor's share (Ray's batch = the engine's block)."""
    from engine import Policy

    if isinstance(llm.policy, Policy):
        return llm.policy.block_size
    if llm.policy != "auto" or workload is None:
        return FALLBACK_BATCH_ROWS
    from engine import plan

    try:
        planned = plan(llm.model_dir, workload.as_engine_workload(), memory=memory,
                       device=llm.device, dtype=llm.dtype, offload_dir=llm.offload_dir)
    except Exception:  # planning is an optimisation: the actors plan again, and may fail loudly
        return FALLBACK_BATCH_ROWS
    return planned.policy.block_size
