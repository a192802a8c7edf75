"""Ray Data: the column tasks over a `ray.data.Dataset` too big for one machine (extra `ray`).

    import flexgen_wrangle as fw
    ds = ray.data.read_parquet("s3://bucket/reviews/")
    out = fw.ray.classify(ds, "text", ["positive", "negative"], model=model_dir, into="s")
    out.write_parquet("s3://bucket/labelled/")        # or fw.ray.stats(out) after it ran
    fw.ray.extract(ds, "body", {"total": "float"}, model=model_dir)
    fw.ray.generate(ds, "Summarize: {body}", model=model_dir, max_new_tokens=32)

Each returns a new, lazy Dataset: every input column carried through, the result columns
appended (typed, NULL where the input was NULL or the output did not parse, counted); the input
dataset is untouched. Underneath, `ds.map_batches(ColumnActor, batch_format="pyarrow", ...)`
over a fixed pool of actors: each builds one `fw.LLM` in `__init__` (`model` is a directory or
an `fw.LLM`, shipped as its recipe), planned for its share of the table and for `memory` per
actor (default: what its node has free divided by the actors on it), and runs each batch
through the same pipeline as pandas. `batch_size` defaults to the planner's block for a share.

An actor that dies is restarted by Ray and its batch retried (`max_restarts`,
`max_task_retries`; -1: without limit): no row lost or duplicated. `fw.ray.stats(out)` gathers
every actor's stats into one `RunStats` (seconds are summed over the actors). With `id_column`
and `output`, the job runs at once, writes Parquet under `output`, and a re-run after its driver
was killed skips the rows already written (see `udfs.ray_data.resume` for the two backends);
it returns the dataset of `output`. Rows keep Ray Data's order (`preserve_order` in the
DataContext's execution options keeps the input's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import ray
    import ray.data
except ImportError as err:  # the optional extra
    raise ImportError("fw.ray needs Ray Data: pip install 'flexgen-wrangle[ray]'") from err

from flexgen_wrangle.llm import LLM
from flexgen_wrangle.stats import RunStats
from udfs.ray_data.job import RayJob

__all__ = ["RayJob", "classify", "extract", "generate", "stats"]


def classify(ds: ray.data.Dataset, column: str, labels: list[str], model: str | Path | LLM,
             into: str | None = None, **kwargs: Any) -> ray.data.Dataset:
    """Adds `into` (default "<column>_label") and `<into>_probability`."""
    return RayJob(ds, "classify", model, column=column, into=into, labels=labels,
                  **kwargs).dataset()


def extract(ds: ray.data.Dataset, column: str, schema: Any, model: str | Path | LLM,
            prefix: str = "", **kwargs: Any) -> ray.data.Dataset:
    """Adds one typed column per schema field, named `prefix + field`."""
    return RayJob(ds, "extract", model, column=column, prefix=prefix, schema=schema,
                  **kwargs).dataset()


def generate(ds: ray.data.Dataset, template: str, model: str | Path | LLM,
             into: str = "generated", **kwargs: Any) -> ray.data.Dataset:
    """Adds `into`: free text after `template` filled from each row ("{title}: {body}")."""
    return RayJob(ds, "generate", model, template=template, into=into, **kwargs).dataset()


def stats(ds: ray.data.Dataset) -> RunStats:
    """The stats of every batch the actors of `ds`'s job have run so far, in one `RunStats`."""
    sink = getattr(ds, "_flexgen_stats", None)
    if sink is None:
        raise ValueError("not a dataset returned by fw.ray.classify / extract / generate")
    return ray.get(sink.total.remote())
