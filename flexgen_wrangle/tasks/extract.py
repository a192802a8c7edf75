"""Extract: schema-constrained JSON per row, parsed into a typed Arrow struct.

Decoding runs under the schema's grammar (every output is valid JSON of the schema while the
token budget lasts); an output cut by the budget, or a value that still does not convert (an
impossible date such as 2023-02-30), makes the row NULL and is counted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from engine import SamplingParams
from flexgen_wrangle import prompts
from flexgen_wrangle.constraints import JsonConstraints
from flexgen_wrangle.encoding import PromptEncoder
from flexgen_wrangle.errors import ParseError, SchemaError
from flexgen_wrangle.schema import ExtractSchema
from flexgen_wrangle.tasks.base import strip_stop


def example_answer(answer: Any) -> str:
    """A few-shot answer as compact JSON (a dict), or as given (a JSON string)."""
    if isinstance(answer, str):
        return answer
    try:
        return json.dumps(answer, separators=(",", ":"), default=str)
    except TypeError as err:
        raise SchemaError(f"few-shot answer {answer!r} is not JSON-serialisable: {err}") from None


class Extract:
    name = "extract"
    min_new_positions = 2  # at least "{" and a stop; the budget is capped per block

    def __init__(self, encoder: PromptEncoder, constraints: JsonConstraints, schema: ExtractSchema,
                 instruction: str | None = None, examples: Sequence[tuple[str, Any]] = (),
                 max_new_tokens: int | None = None) -> None:
        if not constraints.stop_ids:
            raise SchemaError("extract needs the model to have an EOS token to end its output")
        self.encoder, self.schema, self.stop_ids = encoder, schema, constraints.stop_ids
        self.arrow_type = schema.arrow_type
        self._constraints = constraints
        self._grammar = constraints.compile(schema.json_schema, lead=encoder.answer_lead)
        self.max_new_tokens = max_new_tokens or schema.max_new_tokens()
        shots = [(text, example_answer(answer)) for text, answer in examples]
        self.prefix_text = prompts.extract_prefix(schema.prompt_text, instruction, shots)

    def row_text(self, text: str) -> str:
        return prompts.extract_row(text)

    def run(self, engine: Any, prompt_ids: list[list[int]], prefix: list[int] | None,
            max_new_tokens: int) -> list[list[int]]:
        params = SamplingParams(max_new_tokens=max_new_tokens, stop_ids=tuple(self.stop_ids),
                                logits_processor=self._constraints.processor(self._grammar))
        return engine.generate(prompt_ids, params, prefix=prefix)

    def parse(self, raw: list[int]) -> dict:
        ids, stopped = strip_stop(raw, self.stop_ids)
        if not stopped:
            raise ParseError(f"output cut at {len(raw)} tokens before the JSON was complete")
        return self.schema.parse(self.encoder.decode(ids))

    def output_tokens(self, raw: list[int]) -> int:
        return len(raw)

    def prefix_too_long(self, prefix_tokens: int, positions: int) -> SchemaError:
        return SchemaError(
            f"the prompt's shared part (instruction, examples and the schema of "
            f"{len(self.schema.fields)} fields) takes {prefix_tokens} tokens; the model has "
            f"{positions} positions, leaving no room for a row and its answer. Extract fewer "
            "fields per call (several calls over the same column) or shorten the examples")
