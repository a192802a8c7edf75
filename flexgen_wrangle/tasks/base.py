"""The interface between a task and the column pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa


class Task(Protocol):
    name: str
    arrow_type: pa.DataType  # type of one result; the column is NULL where parsing failed
    prefix_text: str  # shared by every row (instruction, few-shot examples)
    min_new_positions: int  # positions a row needs after its prompt
    max_new_tokens: int  # generation budget (capped per block by the model's positions)

    def row_text(self, text: str) -> str:
        """The row's own part of the prompt."""

    def run(self, engine: Any, prompts: list[list[int]], prefix: list[int] | None,
            max_new_tokens: int) -> list[Any]:
        """One engine call over a block: a raw output per prompt, in order."""

    def parse(self, raw: Any) -> Any:
        """A raw output as a value of `arrow_type`; raises ParseError when it does not fit."""

    def output_tokens(self, raw: Any) -> int:
        """Tokens generated (or scored) for one row."""

    def prefix_too_long(self, prefix_tokens: int, positions: int) -> Exception:
        """The error to raise when the shared prompt leaves no room for a row (what to cut)."""


def strip_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """(ids without a final stop id, whether the output ended with one)."""
    ids = list(ids)
    if ids and ids[-1] in stop_ids:
        return ids[:-1], True
    return ids, False
