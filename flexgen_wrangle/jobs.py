"""A task over a table: which column(s) go in, which typed columns come out.

Shared by the adapters (pandas, Arrow streams, the CLI): each translates its host's data to an
Arrow table or record batch, calls `ColumnJob.run`, and attaches the returned columns. The job is
built (and its arguments validated) before any model work; `check` validates a table's schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields as dataclass_fields
from typing import Any

import pyarrow as pa

from flexgen_wrangle.columns import TEXT_TYPES
from flexgen_wrangle.errors import ColumnNotFoundError, ColumnTypeError
from flexgen_wrangle.pipeline import PipelineOptions, check_prefix
from flexgen_wrangle.template import Template

KINDS = ("classify", "extract", "generate")
_OPTION_NAMES = {option.name for option in dataclass_fields(PipelineOptions)}


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(task arguments, pipeline options) from one keyword dict."""
    options = {key: value for key, value in kwargs.items() if key in _OPTION_NAMES}
    return {key: value for key, value in kwargs.items() if key not in options}, options


class ColumnJob:
    def __init__(self, kind: str, llm: Any, column: str | None = None,
                 template: str | None = None, into: str | None = None, prefix: str = "",
                 **kwargs: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown task {kind!r}; tasks are {KINDS}")
        self.kind, self.llm, self.column = kind, llm, column
        task_args, self.options = split_options(kwargs)
        self.template = Template.parse(template) if template is not None else None
        if kind != "generate" and not column:
            raise ValueError(f"{kind} needs the input column's name")
        if kind == "generate" and self.template is None:
            self.template = Template.parse("{" + column + "}")
        self.task = self._make_task(task_args)
        check_prefix(llm, self.task)  # a prompt with no room for a row: refused before any work
        self.output_fields = self._output_fields(into, prefix)
        self._spec = {"kind": kind, "column": column, "template": template,
                      "outputs": self.output_names, "args": task_args}

    def describe(self) -> dict[str, Any]:
        """What the job computes, as plain JSON data (a resumed run must match it)."""
        return json.loads(json.dumps(self._spec, default=repr, sort_keys=True))

    def _make_task(self, args: dict[str, Any]) -> Any:
        if self.kind == "classify":
            return self.llm.classify_task(**args)
        if self.kind == "extract":
            return self.llm.extract_task(**args)
        return self.llm.generate_task(prefix=self.template.head, **args)

    def _output_fields(self, into: str | None, prefix: str) -> list[pa.Field]:
        if self.kind == "classify":
            name = into or f"{self.column}_label"
            return [pa.field(name, pa.string()), pa.field(f"{name}_probability", pa.float64())]
        if self.kind == "extract":
            return [pa.field(prefix + field.name, field.type) for field in self.task.arrow_type]
        return [pa.field(into or "generated", pa.string())]

    @property
    def input_columns(self) -> list[str]:
        return list(self.template.fields) if self.template is not None else [self.column]

    def check(self, schema: pa.Schema) -> None:
        """Every input column exists; a classify/extract column holds text."""
        for name in self.input_columns:
            if name not in schema.names:
                raise ColumnNotFoundError(f"no such column; columns are {schema.names}",
                                          column=name)
        if self.template is None:
            column_type = schema.field(self.column).type
            if not (column_type in TEXT_TYPES or _is_text_dictionary(column_type)):
                raise ColumnTypeError(f"expected a text column, got type {column_type}",
                                      column=self.column)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        kept = [field for field in schema if field.name not in self.output_names]
        return pa.schema(kept + self.output_fields, metadata=schema.metadata)

    @property
    def output_names(self) -> list[str]:
        return [field.name for field in self.output_fields]

    def run(self, table: pa.Table | pa.RecordBatch) -> list[pa.Array]:
        """The output columns for `table`'s rows, in order, aligned with `output_fields`."""
        self.check(table.schema)
        if self.template is not None:
            texts = self.template.render({name: table.column(name) for name in self.input_columns})
        else:
            texts = table.column(self.column)
        result = self.llm.run(self.task, texts, column=self.column, **self.options)
        if self.kind == "generate":
            return [result]
        return result.flatten()  # struct -> one array per field, the row's NULL kept


def _is_text_dictionary(data_type: pa.DataType) -> bool:
    return pa.types.is_dictionary(data_type) and data_type.value_type in TEXT_TYPES


def append_columns(table: pa.Table | pa.RecordBatch, job: ColumnJob,
                   arrays: list[pa.Array]) -> pa.Table | pa.RecordBatch:
    """`table` with the job's columns appended (replacing same-named ones)."""
    schema = job.output_schema(table.schema)
    kept = [table.column(field.name) for field in schema if field.name not in job.output_names]
    columns = kept + list(arrays)
    if isinstance(table, pa.RecordBatch):
        return pa.RecordBatch.from_arrays(columns, schema=schema)
    return pa.Table.from_arrays(columns, schema=schema)


def blocks(reader: pa.RecordBatchReader, block_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches regrouped into blocks of `block_rows` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        while batch.num_rows:
            take = min(block_rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            batch, count = batch.slice(take), count + take
            if count == block_rows:
                yield _concat(pending, reader.schema)
                pending, count = [], 0
    if count:
        yield _concat(pending, reader.schema)


def _concat(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.RecordBatch:
    return pa.Table.from_batches(batches, schema=schema).combine_chunks().to_batches()[0]
