"""DuckDB: SQL functions over the column pipeline, and a whole-table stream path.

    import duckdb, flexgen_wrangle as fw
    con = duckdb.connect()
    fw.register_duckdb(con, llm)
    con.sql("SELECT flexgen_classify(review, ['positive', 'negative']) FROM reviews")
    fw.register_duckdb_extractor(con, "extract_invoice", {"vendor": "string", "total": "float"}, llm)
    con.sql("SELECT (extract_invoice(body)).total FROM docs")         -- a DOUBLE
    fw.duckdb_apply(con, "SELECT id, body FROM docs", "extract", llm=llm, column="body",
                    schema=schema, into="results")                      -- a table

`register_duckdb` registers vectorised (Arrow) functions, named with `prefix`:
  flexgen_classify(text VARCHAR, labels VARCHAR[]) -> VARCHAR             the label
  flexgen_classify_scored(text VARCHAR, labels VARCHAR[]) -> STRUCT(label VARCHAR, probability DOUBLE)
  flexgen_extract(text VARCHAR, schema_json VARCHAR) -> JSON              typed values as JSON
  flexgen_generate(prompt VARCHAR) -> VARCHAR                             `max_new_tokens` new tokens
  flexgen_generate_n(prompt VARCHAR, max_new_tokens INTEGER) -> VARCHAR
(DuckDB allows one signature per Python function name, hence the `_scored` and `_n` variants.)

NULL in (text or argument) gives NULL out; a row whose output does not parse, or whose prompt is
too long for the model, is NULL and counted in `SqlFunctions.stats`; the query goes on. A bad
argument (empty or repeated labels, a schema that is not JSON or not a schema) fails the query
at its first chunk with a message naming the function and the argument; a wrongly typed one
fails at bind (DuckDB's "No function matches"). `flexgen_generate*` are registered with
`side_effects=True`, so DuckDB never folds or reuses them.

Costs. DuckDB hands a function 2,048 rows per call and needs them back before it sends more
from that thread. Calls that DuckDB's threads make at the same time are merged into one pipeline
run (`udfs.merge_queue`); a table scanned by one thread (DuckDB parallelises per row group of
122,880 rows) gives one 2,048-row run per call. So the scalar path dedups and length-sorts
within 2,048 rows (times the threads), and pays the per-run overhead once per chunk; the stream
path `duckdb_apply` runs blocks of `block_rows` (16,384 by default) and is as fast as the pandas
accessor. Measured: docs/benchmarks.md, "DuckDB".
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from flexgen_wrangle.errors import WrangleError
from flexgen_wrangle.stats import RunStats
from flexgen_wrangle.tasks.classify import RESULT_TYPE as CLASSIFY_TYPE
from udfs.arrow_stream import map_reader
from udfs.merge_queue import MergeQueue, queue_for

DEFAULT_APPLY_BLOCK_ROWS = 16384  # as many rows as the pipeline dedups and sorts together
MAX_TASKS_KEPT = 64  # distinct label lists / schemas per function whose tasks are kept built
_SCALARS = {pa.string(): "VARCHAR", pa.large_string(): "VARCHAR", pa.int64(): "BIGINT",
            pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.date32(): "DATE"}


class SqlArgumentError(WrangleError, ValueError):
    """A SQL function's argument cannot be used (the message names the function and argument)."""


def sql_type(data_type: pa.DataType) -> duckdb.DuckDBPyType:
    """The DuckDB type of a result's Arrow type: STRUCT, LIST and the shorthand scalars."""
    if pa.types.is_struct(data_type):
        return duckdb.struct_type({field.name: sql_type(field.type) for field in data_type})
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return duckdb.list_type(sql_type(data_type.value_type))
    if data_type not in _SCALARS:
        raise TypeError(f"no DuckDB type for Arrow type {data_type}")
    return duckdb.sqltype(_SCALARS[data_type])


class _Tasks:
    """One function's tasks by argument value, built (and validated) once each."""

    def __init__(self, function: str, argument: str, build: Callable[[Any], Any]) -> None:
        self.function, self.argument, self._build = function, argument, build
        self._built: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._built:
                try:
                    task = self._build(key)
                except (ValueError, TypeError) as err:
                    shown = list(key) if isinstance(key, tuple) else key
                    raise SqlArgumentError(f"{self.function}: argument {self.argument} "
                                           f"{shown!r}: {err}") from None
                if len(self._built) >= MAX_TASKS_KEPT:
                    self._built.pop(next(iter(self._built)))
                self._built[key] = task
            return self._built[key]


class SqlFunctions:
    """What `register_duckdb` registered: the SQL names and the stats of each function."""

    def __init__(self, con: duckdb.DuckDBPyConnection, llm: Any, queue: MergeQueue) -> None:
        self.con, self.llm, self.queue = con, llm, queue
        self.names: list[str] = []
        self.stats: dict[str, RunStats] = {}

    def add(self, name: str, parameters: list[Any], return_type: Any, body: Callable,
            side_effects: bool = False) -> None:
        self.con.create_function(name, body, parameters, return_type, type="arrow",
                                 null_handling="special", side_effects=side_effects)
        self.names.append(name)

    def run(self, name: str, task: Any, texts: pa.Array) -> pa.Array:
        sink = self.stats.setdefault(name, RunStats(task.name))
        return self.queue.run(self.llm, task, texts, sink)

    def function(self, name: str, tasks: _Tasks, finish: Callable[[pa.Array], pa.Array],
                 out_type: pa.DataType, wrap: Callable[[pa.Array], pa.Array] = lambda a: a,
                 with_argument: bool = True) -> Callable:
        """The Arrow function (DuckDB counts its parameters): rows grouped by their argument's
        value, each group one queued run; `finish` maps a run's results to `out_type`, `wrap`
        the chunk's to the SQL type."""

        def grouped(texts: pa.ChunkedArray, argument: pa.ChunkedArray) -> pa.Array:
            texts = texts.combine_chunks()
            groups: dict[Any, list[int]] = {}
            for row_idx, value in enumerate(argument.to_pylist()):
                groups.setdefault(_hashable(value), []).append(row_idx)
            pieces, order = [], []
            for key, rows in groups.items():
                if key is None:
                    pieces.append(pa.nulls(len(rows), out_type))
                else:
                    group = texts if len(groups) == 1 else texts.take(pa.array(rows, pa.int64()))
                    pieces.append(finish(self.run(name, tasks.get(key), group)))
                order.extend(rows)
            if len(pieces) == 1:
                return wrap(pieces[0])
            merged = pa.concat_arrays(pieces)  # rows in `order`; back to the chunk's order
            return wrap(merged.take(pc.sort_indices(pa.array(order, pa.int64()))))

        def single(texts: pa.ChunkedArray) -> pa.Array:
            return wrap(finish(self.run(name, tasks.get(None), texts.combine_chunks())))

        return grouped if with_argument else single


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _labels(value: tuple) -> list[str]:
    if any(label is None for label in value):
        raise ValueError("labels must not contain NULL")
    return list(value)


def _json_rows(result: pa.Array) -> pa.Array:
    """Typed results as compact JSON text (dates ISO), NULL rows NULL."""
    return pa.array([None if row is None else json.dumps(row, default=str, separators=(",", ":"))
                     for row in result.to_pylist()], pa.string())


def _as_json(array: pa.Array) -> pa.Array:
    return pa.ExtensionArray.from_storage(pa.json_(), array)


def _label_only(result: pa.StructArray) -> pa.Array:
    return result.flatten()[0]


def register_duckdb(con: duckdb.DuckDBPyConnection, llm: Any, prefix: str = "flexgen_",
                    max_new_tokens: int = 64) -> SqlFunctions:
    """Register the classify / extract / generate functions on `con` (names in the module
    docstring); `max_new_tokens` is `flexgen_generate`'s budget. Returns the names and stats."""
    _need_llm(llm)
    functions = SqlFunctions(con, llm, queue_for(llm))
    varchar, labels_type = duckdb.sqltype("VARCHAR"), duckdb.list_type("VARCHAR")
    for suffix, finish, out_type in (("classify", _label_only, pa.string()),
                                     ("classify_scored", lambda result: result, CLASSIFY_TYPE)):
        name = prefix + suffix
        tasks = _Tasks(name, "labels", lambda labels: llm.classify_task(_labels(labels)))
        functions.add(name, [varchar, labels_type], sql_type(out_type),
                      functions.function(name, tasks, finish, out_type))
    name = prefix + "extract"
    tasks = _Tasks(name, "schema_json", llm.extract_task)
    functions.add(name, [varchar, varchar], duckdb.sqltype("JSON"),
                  functions.function(name, tasks, _json_rows, pa.string(), wrap=_as_json))
    name = prefix + "generate"
    tasks = _Tasks(name, "max_new_tokens", lambda _: llm.generate_task(max_new_tokens))
    functions.add(name, [varchar], varchar,
                  functions.function(name, tasks, lambda result: result, pa.string(),
                                     with_argument=False), side_effects=True)
    name = prefix + "generate_n"
    tasks = _Tasks(name, "max_new_tokens", lambda limit: llm.generate_task(limit))
    functions.add(name, [varchar, duckdb.sqltype("INTEGER")], varchar,
                  functions.function(name, tasks, lambda result: result, pa.string()),
                  side_effects=True)
    return functions


def register_duckdb_extractor(con: duckdb.DuckDBPyConnection, name: str, schema: Any, llm: Any,
                              **task_kwargs: Any) -> SqlFunctions:
    """`name(text VARCHAR) -> STRUCT(...)`, one typed field per schema field (DOUBLE, BIGINT,
    DATE, VARCHAR[], nested STRUCT, ...). The schema (and `instruction`, `examples`,
    `max_new_tokens`) is checked here, before any query."""
    _need_llm(llm)
    task = llm.extract_task(schema, **task_kwargs)
    functions = SqlFunctions(con, llm, queue_for(llm))
    tasks = _Tasks(name, "schema", lambda _: task)
    functions.add(name, [duckdb.sqltype("VARCHAR")], sql_type(task.arrow_type),
                  functions.function(name, tasks, lambda result: result, task.arrow_type,
                                     with_argument=False))
    return functions


def duckdb_apply(con: duckdb.DuckDBPyConnection, query: str, task: str, llm: Any = None,
                 column: str | None = None, into: str | None = None, output: str | None = None,
                 block_rows: int = DEFAULT_APPLY_BLOCK_ROWS,
                 **kwargs: Any) -> duckdb.DuckDBPyRelation:
    """The whole-table path: `query`'s rows streamed through the pipeline in blocks of
    `block_rows`, the result columns appended (`output` names classify's / generate's column;
    extract adds one column per field, `prefix` before each).

    into="table": the rows are written to a new table of that name (through a cursor of `con`,
    while `con` streams the query), and a relation over it is returned. into=None: a relation
    that streams the results once; the query then runs on a cursor of `con`, which sees the
    database's tables but not `con`'s temporary ones. Memory stays bounded by a few blocks,
    whatever the table's size. The run's stats are in `llm.last_stats`."""
    _need_llm(llm)
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    source = con if into is not None else con.cursor()
    reader = source.sql(query).to_arrow_reader(block_rows)
    mapped = map_reader(reader, task, llm, column=column, block_rows=block_rows, into=output,
                        progress=False, **kwargs)
    if into is None:
        return con.from_arrow(mapped)
    with con.cursor() as writer:
        writer.from_arrow(mapped).create(into)
    return con.table(into)


def open_query(database: Path, query: str, batch_rows: int) -> pa.RecordBatchReader:
    """A lazy reader over `query` on a DuckDB database file, opened read-only (the CLI's input);
    duckdb.Error when the database or the query is bad."""
    con = duckdb.connect(str(database), read_only=True)
    reader = con.sql(query).to_arrow_reader(batch_rows)
    return pa.RecordBatchReader.from_batches(reader.schema, _holding(con, reader))


def _holding(con: duckdb.DuckDBPyConnection, reader: pa.RecordBatchReader
             ) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    finally:
        con.close()


def _need_llm(llm: Any) -> None:
    from flexgen_wrangle.llm import LLM

    if not isinstance(llm, LLM):
        raise ValueError(f"pass llm=fw.LLM(model_dir) (or fw.LLM.demo()), got {llm!r}")
