"""Classify: the label whose tokens are most likely after the prompt, and its probability.

Each label's total log-likelihood (the sum over its tokens) comes from `Engine.score`, which
computes each prompt once for all labels; the probability is a softmax over the labels' totals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from flexgen_wrangle import prompts
from flexgen_wrangle.encoding import PromptEncoder
from flexgen_wrangle.errors import LabelsError, ParseError

CANDIDATES_PER_CALL = 128  # labels scored per engine call (each holds a copy of the row caches)
RESULT_TYPE = pa.struct([pa.field("label", pa.string()), pa.field("probability", pa.float64())])


def validate_labels(labels: Any) -> list[str]:
    if isinstance(labels, str | bytes) or not isinstance(labels, Sequence):
        raise LabelsError(f"labels must be a list of strings, got {labels!r}")
    if not labels:
        raise LabelsError("labels is empty; give at least one label")
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise LabelsError(f"label {label!r} is not a non-empty string")
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise LabelsError(f"label {label!r} appears more than once")
        seen.add(label)
    return list(labels)


def softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    weights = [math.exp(score - top) for score in scores]
    total = sum(weights)
    return [weight / total for weight in weights]


class Classify:
    name = "classify"
    arrow_type = RESULT_TYPE
    max_new_tokens = 1  # unused: scoring generates nothing

    def __init__(self, encoder: PromptEncoder, labels: Sequence[str], instruction: str | None = None,
                 examples: Sequence[tuple[str, str]] = ()) -> None:
        self.labels = validate_labels(labels)
        self._check_examples(examples)
        self.candidates = [encoder.encode_answer(label) for label in self.labels]
        self._check_candidates()
        self.prefix_text = prompts.classify_prefix(self.labels, instruction, list(examples))
        self.min_new_positions = max(len(candidate) for candidate in self.candidates)

    def _check_examples(self, examples: Sequence[tuple[str, str]]) -> None:
        for text, label in examples:
            if not isinstance(text, str) or label not in self.labels:
                raise LabelsError(f"few-shot example ({text!r}, {label!r}) needs a text and one "
                                  f"of the labels {self.labels}")

    def _check_candidates(self) -> None:
        seen: dict[tuple[int, ...], str] = {}
        for label, candidate in zip(self.labels, self.candidates, strict=True):
            if not candidate:
                raise LabelsError(f"label {label!r} encodes to no tokens")
            if tuple(candidate) in seen:
                raise LabelsError(f"labels {seen[tuple(candidate)]!r} and {label!r} encode to "
                                  f"the same tokens {candidate}, so the model cannot tell them "
                                  "apart; rename or merge one of them")
            seen[tuple(candidate)] = label

    def row_text(self, text: str) -> str:
        return prompts.classify_row(text)

    def run(self, engine: Any, prompt_ids: list[list[int]], prefix: list[int] | None,
            max_new_tokens: int) -> list[list[float]]:
        """Scores per row, the labels scored `CANDIDATES_PER_CALL` at a time: the engine copies
        each row's cache once per label it scores together, so 1,000 labels at once would hold
        1,000 copies; each label's score does not depend on the others scored with it."""
        rows: list[list[float]] = [[] for _ in prompt_ids]
        for start in range(0, len(self.candidates), CANDIDATES_PER_CALL):
            chunk = self.candidates[start : start + CANDIDATES_PER_CALL]
            for row, scores in zip(rows, engine.score(prompt_ids, chunk, prefix=prefix),
                                   strict=True):
                row.extend(scores)
        return rows

    def parse(self, raw: list[float]) -> dict:
        if not all(math.isfinite(score) for score in raw):
            raise ParseError(f"non-finite label scores {raw}")
        probabilities = softmax(raw)
        best = max(range(len(raw)), key=raw.__getitem__)
        return {"label": self.labels[best], "probability": probabilities[best]}

    def output_tokens(self, raw: Any) -> int:
        return sum(len(candidate) for candidate in self.candidates)

    def prefix_too_long(self, prefix_tokens: int, positions: int) -> LabelsError:
        longest = max(range(len(self.labels)), key=lambda idx: len(self.candidates[idx]))
        return LabelsError(
            f"the prompt's shared part (instruction, examples and the list of "
            f"{len(self.labels)} labels) takes {prefix_tokens} tokens and the longest label, "
            f"{_shown(self.labels[longest])}, {len(self.candidates[longest])} more; the model "
            f"has {positions} positions, leaving no room for a row. Use fewer or shorter labels "
            "(or a model with a longer context)")


def _shown(label: str, chars: int = 40) -> str:
    return repr(label if len(label) <= chars else label[:chars] + "...")
