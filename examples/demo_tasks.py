"""Task examples for the demo model in exactly the `flexgen_wrangle.prompts` formats, and a
held-out evaluation with HF transformers (independent of the project's engine).

A training example is a list of `(text, scored)` segments whose concatenation is the prompt
and answer: classify answers are `" <label>"` after `Label:`, extract answers `" <compact
json>"` after `JSON:`, and the model then emits EOS. The answers of few-shot examples inside
the prefix are scored too. A plain document is one scored segment.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from examples.demo_data import (
    CATEGORY_LABELS,
    INVOICE_SCHEMA,
    SENTIMENT_LABELS,
    Record,
    answer_json,
    schema_text,
)
from flexgen_wrangle.prompts import classify_prefix, classify_row, extract_prefix, extract_row

Example = list[tuple[str, bool]]  # (text, scored) segments

CLASSIFY_INSTRUCTIONS = (
    "Classify the sentiment of the review.",
    "What is the category of this support ticket?",
    "Pick the best label for the text.",
    "Choose one label.",
)
EXTRACT_INSTRUCTIONS = (
    "Extract the invoice fields as JSON.",
    "Return a JSON object with the fields in the schema.",
    "Read the invoice and fill in the schema.",
)


def labels_for(kind: str) -> tuple[str, ...]:
    return SENTIMENT_LABELS if kind == "review" else CATEGORY_LABELS


def classify_prompt(text: str, kind: str) -> str:
    """The canonical (default instruction, zero-shot) classify prompt."""
    return classify_prefix(labels_for(kind)) + classify_row(text)


def extract_prompt(text: str) -> str:
    """The canonical (default instruction, zero-shot, full schema) extract prompt."""
    return extract_prefix(schema_text()) + extract_row(text)


def _instruction(rng: random.Random, variants: Sequence[str]) -> str | None:
    return None if rng.random() < 0.6 else rng.choice(variants)


def _n_shots(rng: random.Random) -> int:
    return 0 if rng.random() < 0.8 else rng.randint(1, 3)


def _segments(head: str, rows: Sequence[tuple[str, str]], full_prompt: str) -> Example:
    """`head`, then each (row prompt, answer) with `\n\n` between: the answers are scored.
    Asserts the text is exactly `full_prompt` + last answer, i.e. the prompts.py format."""
    segments = [(head, False)]
    for row_idx, (prompt, answer) in enumerate(rows):
        segments += [("\n\n", False)] if row_idx else []
        segments += [(prompt, False), (f" {answer}", True)]
    assert "".join(text for text, _ in segments) == full_prompt + f" {rows[-1][1]}"
    return segments


def classify_example(rng: random.Random, row: Record, pool: Sequence[Record]) -> Example:
    """A classify example; shots come from `pool` (rows of the same kind)."""
    labels = list(labels_for(row["kind"]))
    if rng.random() < 0.3:
        rng.shuffle(labels)
    instruction = _instruction(rng, CLASSIFY_INSTRUCTIONS)
    shots = [(shot["text"], shot["label"]) for shot in rng.sample(pool, _n_shots(rng))]
    rows = [(classify_row(text), label) for text, label in [*shots, (row["text"], row["label"])]]
    prompt = classify_prefix(labels, instruction, shots) + classify_row(row["text"])
    return _segments(classify_prefix(labels, instruction), rows, prompt)


def _fields(rng: random.Random) -> list[str]:
    """Mostly the full schema; sometimes a subset, sometimes reordered."""
    fields = list(INVOICE_SCHEMA)
    if rng.random() < 0.8:
        return fields
    fields = rng.sample(fields, rng.randint(1, len(fields)))
    return fields if rng.random() < 0.5 else sorted(fields, key=list(INVOICE_SCHEMA).index)


def extract_example(rng: random.Random, row: Record, pool: Sequence[Record]) -> Example:
    """An extract example; shots come from `pool` (invoice rows)."""
    fields = _fields(rng)
    instruction = _instruction(rng, EXTRACT_INSTRUCTIONS)
    shots = [(shot["text"], answer_json(shot, fields)) for shot in rng.sample(pool, _n_shots(rng))]
    rows = [(extract_row(text), answer) for text, answer in
            [*shots, (row["text"], answer_json(row, fields))]]
    prompt = extract_prefix(schema_text(fields), instruction, shots) + extract_row(row["text"])
    return _segments(extract_prefix(schema_text(fields), instruction), rows, prompt)


def copy_example(row: Record) -> Example:
    """Auxiliary task: repeat the text. Every token of the copy is scored, a dense signal for
    the attention pattern extraction needs (find a span of the text, continue it)."""
    return [(f"Text: {row['text']}\nCopy:", False), (f" {row['text']}", True)]


# -- evaluation ----------------------------------------------------------------------------


def greedy_complete(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                    batch_size: int = 50) -> list[str]:
    """Greedy continuation of each prompt (left-padded batches), special tokens dropped."""
    import torch

    tokenizer.padding_side = "left"
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt",
                          padding=True)
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)  # (B, T + new)
        new_ids = ids[:, batch["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(new_ids, skip_special_tokens=True)
    return outputs


def value_hits(values: dict, row: Record) -> dict[str, bool]:
    """Per schema field: do the extracted `values` (JSON-parsed, or typed from Arrow: a date
    is a `datetime.date`) hold the row's known value? Totals match to the cent."""
    def hit(key: str) -> bool:
        value = values.get(key)
        if key == "total":
            return isinstance(value, (int, float)) and abs(value - row["total"]) < 0.005
        return value is not None and str(value) == row[key]

    return {key: hit(key) for key in INVOICE_SCHEMA}


def field_hits(answer: str, row: Record) -> dict[str, bool]:
    """`value_hits` of a generated JSON answer (all False when it does not parse)."""
    try:
        parsed = json.loads(answer)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        return dict.fromkeys(INVOICE_SCHEMA, False)
    return value_hits(parsed, row)


def evaluate(model: Any, tokenizer: Any, rows: Sequence[Record]) -> dict[str, float]:
    """Held-out accuracy: classify (reviews + tickets), extract (invoices: all fields right,
    and each field alone)."""
    labelled = [row for row in rows if row["kind"] != "invoice"]
    invoices = [row for row in rows if row["kind"] == "invoice"]
    prompts = [classify_prompt(row["text"], row["kind"]) for row in labelled]
    guesses = greedy_complete(model, tokenizer, prompts, max_new_tokens=4)
    hits = sum(guess.strip() == row["label"] for guess, row in zip(guesses, labelled, strict=True))
    prompts = [extract_prompt(row["text"]) for row in invoices]
    answers = greedy_complete(model, tokenizer, prompts, max_new_tokens=64)
    per_row = [field_hits(answer.strip(), row) for answer, row in zip(answers, invoices, strict=True)]
    n_invoices = max(len(invoices), 1)
    return {
        "classify_accuracy": hits / max(len(labelled), 1),
        "extract_exact": sum(all(row.values()) for row in per_row) / n_invoices,
        **{f"extract_{key}": sum(row[key] for row in per_row) / n_invoices for key in INVOICE_SCHEMA},
        "classify_rows": float(len(labelled)),
        "extract_rows": float(len(invoices)),
    }
