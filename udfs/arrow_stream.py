"""Arrow streams: map a `pyarrow.RecordBatchReader` to one with result columns appended.

Batches are pulled lazily and gathered into blocks of about `block_rows` rows, so the input is
never materialised; each block goes through the column pipeline (NULLs, dedup, length buckets,
shared prefix) and comes out as one record batch. Stats accumulate in `llm.last_stats`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from flexgen_wrangle.jobs import ColumnJob, append_columns, blocks
from flexgen_wrangle.stats import RunStats

DEFAULT_BLOCK_ROWS = 4096  # rows per pipeline run: big enough for dedup and length buckets


def map_reader(reader: pa.RecordBatchReader, task: str, llm: Any, column: str | None = None,
               block_rows: int = DEFAULT_BLOCK_ROWS, **kwargs: Any) -> pa.RecordBatchReader:
    """`task` is "classify" (labels=...), "extract" (schema=...) or "generate" (template=...);
    the remaining keywords are the task's (into, prefix, instruction, ...)."""
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    job = ColumnJob(task, llm, column=column, **kwargs)
    job.check(reader.schema)  # before any model work
    return pa.RecordBatchReader.from_batches(job.output_schema(reader.schema),
                                             _mapped(reader, job, block_rows))


def classify_reader(reader: pa.RecordBatchReader, column: str, labels: list[str], llm: Any,
                    **kwargs: Any) -> pa.RecordBatchReader:
    return map_reader(reader, "classify", llm, column=column, labels=labels, **kwargs)


def extract_reader(reader: pa.RecordBatchReader, column: str, schema: Any, llm: Any,
                   **kwargs: Any) -> pa.RecordBatchReader:
    return map_reader(reader, "extract", llm, column=column, schema=schema, **kwargs)


def generate_reader(reader: pa.RecordBatchReader, template: str, llm: Any,
                    **kwargs: Any) -> pa.RecordBatchReader:
    return map_reader(reader, "generate", llm, template=template, **kwargs)


def _mapped(reader: pa.RecordBatchReader, job: ColumnJob,
            block_rows: int) -> Iterator[pa.RecordBatch]:
    total = RunStats(job.task.name)
    for batch in blocks(reader, block_rows):
        arrays = job.run(batch)
        total.merge(job.llm.last_stats)
        job.llm.last_stats = total
        yield append_columns(batch, job, arrays)
