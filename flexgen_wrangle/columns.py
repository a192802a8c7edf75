"""Inputs as Arrow text arrays: lists, Arrow arrays and chunked arrays of strings (and NULLs)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from flexgen_wrangle.errors import ColumnTypeError

TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view(), pa.null())


def as_text_array(values: Any, column: str | None = None) -> pa.Array:
    """`values` as a pa.string() array; ColumnTypeError (a ValueError) when they are not text."""
    if isinstance(values, str | bytes):
        raise ColumnTypeError("expected a column of texts (a list or an Arrow array), got one "
                              "string; wrap it in a list", column=column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    if not isinstance(values, pa.Array):
        try:
            values = pa.array(list(values), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as err:
            raise ColumnTypeError(f"expected text values: {err}", column=column) from None
    if pa.types.is_dictionary(values.type) and values.type.value_type in TEXT_TYPES:
        values = values.dictionary_decode()
    if values.type not in TEXT_TYPES:
        raise ColumnTypeError(f"expected a text column, got type {values.type}", column=column)
    return values.cast(pa.string())
