"""Prompt templates over several columns: "{title}: {body}".

The literal text before the first field is the same for every row, so it becomes the shared
prefix; the rest is rendered per row. A row with a NULL in any named column renders to NULL.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from flexgen_wrangle.errors import ColumnNotFoundError, TemplateError


@dataclass(frozen=True)
class Template:
    text: str
    fields: tuple[str, ...]  # column names, in order of first use
    head: str  # literal text before the first field: shared by every row
    body: str  # the rest, rendered per row

    @classmethod
    def parse(cls, text: str) -> Template:
        if not isinstance(text, str) or not text:
            raise TemplateError(f"a template must be a non-empty string, got {text!r}")
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as err:
            raise TemplateError(f"template {text!r} cannot be parsed: {err}") from None
        fields: list[str] = []
        for _, name, _, _ in parts:
            if name is not None and not name:
                raise TemplateError(f"template {text!r} has an empty field {{}}; name a column")
            if name and name not in fields:
                fields.append(name)
        if not fields:
            raise TemplateError(f"template {text!r} names no column; write e.g. '{{body}}'")
        head = _literal_head(parts)
        escaped = len(head.replace("{", "{{").replace("}", "}}"))  # its length in `text`
        return cls(text, tuple(fields), head, text[escaped:])

    def check_columns(self, columns: Sequence[str]) -> None:
        for name in self.fields:
            if name not in columns:
                raise ColumnNotFoundError(
                    f"template {self.text!r} names column {name!r}, which is not in the table "
                    f"(columns: {list(columns)})", column=name)

    def render(self, columns: Mapping[str, pa.Array | pa.ChunkedArray]) -> pa.Array:
        """The row part of each prompt (NULL where a named column is NULL)."""
        self.check_columns(list(columns))
        values = {name: columns[name].to_pylist() for name in self.fields}
        rows = len(next(iter(values.values())))
        rendered = []
        for row_idx in range(rows):
            row = {name: values[name][row_idx] for name in self.fields}
            ok = all(value is not None for value in row.values())
            rendered.append(self.body.format(**row) if ok else None)
        return pa.array(rendered, type=pa.string())


def _literal_head(parts: list[tuple]) -> str:
    """The literal text before the first field ("{{" already unescaped to "{")."""
    head = []
    for literal, name, _, _ in parts:
        head.append(literal)
        if name is not None:
            break
    return "".join(head)
