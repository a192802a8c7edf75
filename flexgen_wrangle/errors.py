"""Errors that say what they are about (column, row) and why, and survive pickling.

Validation errors are raised before any model work. Rows whose output cannot be parsed are not
errors: they come back NULL and are counted in the run's stats (see `flexgen_wrangle.stats`).
"""

from __future__ import annotations


class WrangleError(Exception):
    """Base class: `reason`, plus the `column` and `row` it concerns when known."""

    def __init__(self, reason: str, column: str | None = None, row: int | None = None) -> None:
        self.reason, self.column, self.row = reason, column, row
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = []
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.row is not None:
            where.append(f"row {self.row}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason

    def __str__(self) -> str:  # KeyError would otherwise print the message quoted
        return self.message

    def __reduce__(self) -> tuple:
        return (type(self), (self.reason, self.column, self.row))


class ColumnNotFoundError(WrangleError, KeyError):
    """A column named by the caller (or by a template) is not in the table."""


class ColumnTypeError(WrangleError, ValueError):
    """A column that must hold text holds something else."""


class LabelsError(WrangleError, ValueError):
    """Classification labels are empty, duplicated or not strings."""


class SchemaError(WrangleError, ValueError):
    """An extraction schema cannot be understood or typed."""


class TemplateError(WrangleError, ValueError):
    """A prompt template cannot be parsed."""


class ParseError(WrangleError, ValueError):
    """One row's model output does not parse into the declared type (the row becomes NULL)."""
