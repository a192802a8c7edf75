"""Prompt text for each task. One place, so the demo model is trained on exactly these formats.

A prompt is `prefix + row part`: the prefix (instruction, few-shot examples) is shared by every
row of a column, so the pipeline computes its KV cache once.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_CLASSIFY_INSTRUCTION = "Classify the text into one of the labels."
DEFAULT_EXTRACT_INSTRUCTION = "Extract the fields as JSON."


def classify_prefix(
    labels: Sequence[str],
    instruction: str | None = None,
    examples: Sequence[tuple[str, str]] = (),
) -> str:
    """Shared part of a classify prompt; `examples` are (text, label) few-shot pairs."""
    head = f"{instruction or DEFAULT_CLASSIFY_INSTRUCTION}\nLabels: {', '.join(labels)}\n\n"
    shots = "".join(classify_row(text) + f" {label}\n\n" for text, label in examples)
    return head + shots


def classify_row(text: str) -> str:
    """Row part of a classify prompt; the label follows after a space."""
    return f"Text: {text}\nLabel:"


def extract_prefix(
    schema_text: str,
    instruction: str | None = None,
    examples: Sequence[tuple[str, str]] = (),
) -> str:
    """Shared part of an extract prompt; `examples` are (text, json) few-shot pairs."""
    head = f"{instruction or DEFAULT_EXTRACT_INSTRUCTION}\nSchema: {schema_text}\n\n"
    shots = "".join(extract_row(text) + f" {answer}\n\n" for text, answer in examples)
    return head + shots


def extract_row(text: str) -> str:
    """Row part of an extract prompt; the JSON object follows after a space."""
    return f"Text: {text}\nJSON:"
