"""Inputs as Arrow text arrays: lists, Arrow arrays and chunked arrays of strings (and NULLs).

Text that is not valid Unicode never fails the column: a Python string with lone surrogates
(what `errors="surrogateescape"` makes of undecodable bytes) and an Arrow string whose bytes are
not UTF-8 (a lax Parquet writer) are repaired as a UTF-8 decoder with `errors="replace"` does,
each bad code unit or byte run becoming U+FFFD; the rest of the row is kept and computed, and a
warning names the column, how many rows were repaired and the first of them.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from flexgen_wrangle.errors import ColumnTypeError

logger = logging.getLogger(__name__)

TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view(), pa.null())
_BINARY_TYPES = (pa.binary(), pa.large_binary(), pa.binary_view())


def as_text_array(values: Any, column: str | None = None) -> pa.Array:
    """`values` as a pa.string() array; ColumnTypeError (a ValueError) when they are not text."""
    if isinstance(values, str | bytes):
        raise ColumnTypeError("expected a column of texts (a list or an Arrow array), got one "
                              "string; wrap it in a list", column=column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    if not isinstance(values, pa.Array):
        values = python_text(list(values), column)
    if pa.types.is_dictionary(values.type) and values.type.value_type in TEXT_TYPES:
        values = values.dictionary_decode()
    if values.type in _BINARY_TYPES:
        raise ColumnTypeError(f"expected a text column, got bytes ({values.type}); decode them "
                              "first, e.g. [value.decode('utf-8', 'replace') for value in ...]",
                              column=column)
    if values.type not in TEXT_TYPES:
        raise ColumnTypeError(f"expected a text column, got type {values.type}", column=column)
    return valid_utf8(values, column).cast(pa.string())


def python_text(items: list, column: str | None = None) -> pa.Array:
    """Python values (str, None, NaN) as an Arrow array; lone surrogates become U+FFFD."""
    try:
        return pa.array(items, from_pandas=True)
    except UnicodeEncodeError:
        repaired = [_without_surrogates(item) if isinstance(item, str) else item
                    for item in items]
        bad = [row for row, (old, new) in enumerate(zip(items, repaired, strict=True))
               if old is not new]
        _warn(column, len(bad), bad[0], "lone surrogates (not valid Unicode)")
        return python_text(repaired, column)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as err:
        raise ColumnTypeError(f"expected text values: {err}", column=column) from None


def _without_surrogates(text: str) -> str:
    """`text` with surrogate pairs joined and lone surrogates replaced by U+FFFD (the same
    object when it has none)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def valid_utf8(values: pa.Array, column: str | None = None) -> pa.Array:
    """`values` (a string array) with invalid UTF-8 byte runs replaced by U+FFFD."""
    if pa.types.is_null(values.type):
        return values
    try:
        values.validate(full=True)
        return values
    except pa.ArrowInvalid:
        pass
    raw = values.cast(pa.large_binary()).to_pylist()
    texts = [None if item is None else item.decode("utf-8", "replace") for item in raw]
    bad = [row for row, (item, text) in enumerate(zip(raw, texts, strict=True))
           if item is not None and text.encode("utf-8") != item]
    if bad:
        _warn(column, len(bad), bad[0], "bytes that are not UTF-8")
    return pa.array(texts, pa.large_string())


def _warn(column: str | None, rows: int, first: int, what: str) -> None:
    where = f"column {column!r}: " if column else ""
    logger.warning("%s%d row(s) hold %s (the first: row %d); each bad part was replaced by "
                   "U+FFFD and the rows computed", where, rows, what, first)
