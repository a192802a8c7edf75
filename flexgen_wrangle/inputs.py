"""`flexgen-wrangle run`'s input: a table file, or a query on a DuckDB database, as a lazy
record batch reader, with the fingerprint a resumed run must match.

Formats: Parquet (a file, or a directory of files read as one dataset in path order), CSV and
TSV (empty fields are NULL; the text columns are read as text), JSON lines, Arrow IPC (file or
stream format), and a DuckDB database with `--query "SELECT ..."` (the query's row order must
be deterministic for `--resume`: a table scan, or ORDER BY). Binary formats are told by their
magic bytes, text formats by the suffix. Whatever cannot be read raises `InputError`, naming
the file, when it is opened or while it is read; an input without rows is an error too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from flexgen_wrangle.errors import WrangleError

BATCH_ROWS = 8192  # rows per batch read; the job regroups them into its blocks
_MAGIC = ((0, b"PAR1", "parquet"), (0, b"ARROW1", "ipc"), (8, b"DUCK", "duckdb"))
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv",
             ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".arrow": "ipc",
             ".arrows": "ipc", ".feather": "ipc", ".ipc": "ipc", ".duckdb": "duckdb",
             ".ddb": "duckdb", ".db": "duckdb"}
FORMATS_TEXT = "Parquet (file or directory), CSV, TSV, JSON lines, Arrow IPC, DuckDB (--query)"


class InputError(WrangleError, ValueError):
    """The input is missing, unreadable, empty, or not a format `run` reads."""


@dataclass
class TableInput:
    path: Path
    query: str | None
    text_columns: tuple[str, ...]
    reader: pa.RecordBatchReader  # the rows, pulled lazily; reading errors are InputError
    fingerprint: dict[str, Any]  # what identifies the input for --resume
    rows: int | None  # the row count, when the format tells it without a scan

    def reopen(self) -> TableInput:
        """The same input from its first row again."""
        return open_input(self.path, self.query, self.text_columns)


def open_input(path: Path, query: str | None = None,
               text_columns: Sequence[str] = ()) -> TableInput:
    """Open `path` (a DuckDB database needs `query`; other formats refuse one)."""
    kind = detect_format(path)
    if (kind == "duckdb") != (query is not None):
        raise InputError(f"input {path}: a DuckDB database needs --query \"SELECT ...\""
                         if kind == "duckdb" else
                         f"input {path}: --query applies to a DuckDB database only")
    try:
        reader, rows = _open(kind, path, query, list(text_columns))
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InputError(f"input {path} cannot be read as {kind}: {_first_line(err)}") from None
    except Exception as err:  # duckdb.Error: flexgen_wrangle does not import duckdb itself
        if type(err).__module__.split(".")[0] not in ("duckdb", "_duckdb"):
            raise
        raise InputError(f"input {path}: the query failed: {_first_line(err)}") from None
    fingerprint = {"format": kind, "path": str(path.resolve()), "files": _file_stats(path)}
    if query is not None:
        fingerprint["query"] = query
    return TableInput(path, query, tuple(text_columns), _non_empty(path, reader), fingerprint,
                      rows)


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "parquet"
    if not path.is_file():
        raise InputError(f"input {path} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"input {path} is empty (0 bytes)")
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as err:
        raise InputError(f"input {path} cannot be read: {err.strerror}") from None
    for offset, magic, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind in ("parquet", "duckdb"):
        raise InputError(f"input {path} is not a {kind} file: it does not start with "
                         f"{kind}'s magic bytes (truncated, or another format)")
    if kind is None:
        raise InputError(f"input {path}: not a format `run` reads ({FORMATS_TEXT})")
    return kind


def _open(kind: str, path: Path, query: str | None,
          text_columns: list[str]) -> tuple[pa.RecordBatchReader, int | None]:
    if kind == "parquet":
        return _parquet(path)
    if kind in ("csv", "tsv"):
        types = {name: pa.string() for name in text_columns}
        convert = pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True)
        parse = pa_csv.ParseOptions(delimiter="\t" if kind == "tsv" else ",")
        return pa_csv.open_csv(path, parse_options=parse, convert_options=convert), None
    if kind == "jsonl":
        return pa_json.open_json(path), None
    if kind == "ipc":
        return _ipc(path)
    from udfs.duckdb_udf import open_query  # duckdb is imported only for a DuckDB input

    return open_query(path, query, BATCH_ROWS), None


def _parquet(path: Path) -> tuple[pa.RecordBatchReader, int]:
    files = _parquet_files(path)
    opened = [pq.ParquetFile(file) for file in files]
    schema = opened[0].schema_arrow
    for file, parquet in zip(files, opened, strict=True):
        if not parquet.schema_arrow.equals(schema):
            raise InputError(f"input {file}: its columns ({parquet.schema_arrow.names}, "
                             f"types differ) are not those of {files[0]}")
    batches = itertools.chain.from_iterable(parquet.iter_batches(BATCH_ROWS) for parquet in opened)
    rows = sum(parquet.metadata.num_rows for parquet in opened)
    return pa.RecordBatchReader.from_batches(schema, batches), rows


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(file for file in path.rglob("*.parquet") if file.is_file() and not any(
        part.startswith((".", "_")) for part in file.relative_to(path).parts))
    if not files:
        raise InputError(f"input {path} is a directory without .parquet files")
    return files


def _ipc(path: Path) -> tuple[pa.RecordBatchReader, int | None]:
    source = pa.memory_map(str(path))
    try:
        ipc_file = pa.ipc.open_file(source)
    except pa.ArrowInvalid:  # not the file format: the stream format
        return pa.ipc.open_stream(pa.memory_map(str(path))), None
    batches = (ipc_file.get_batch(idx) for idx in range(ipc_file.num_record_batches))
    rows = sum(ipc_file.get_batch(idx).num_rows for idx in range(ipc_file.num_record_batches))
    return pa.RecordBatchReader.from_batches(ipc_file.schema, batches), rows


def _non_empty(path: Path, reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """`reader`, read up to its first row now (an input without rows fails before any work);
    errors while reading later are InputError too."""
    batches = _guarded(path, reader)
    for batch in batches:
        if batch.num_rows:
            return pa.RecordBatchReader.from_batches(reader.schema,
                                                     itertools.chain([batch], batches))
    raise InputError(f"input {path} has no rows")


def _guarded(path: Path, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"input {path} cannot be read: {_first_line(err)}") from None


def _file_stats(path: Path) -> list[list[Any]]:
    """[relative name, bytes] of each file. Not the mtime: an input written again with the same
    rows is the same input (a resumed run checks every block's rows against its part)."""
    files = [path] if path.is_file() else sorted(file for file in path.rglob("*") if file.is_file())
    base = path.parent if path.is_file() else path
    return [[str(file.relative_to(base)), file.stat().st_size] for file in files]


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
