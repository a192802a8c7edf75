"""Generate: free text after each prompt, ended by EOS, a stop string or the token budget.

Stop strings are watched by a logits processor: once a row's text contains one, only the stop
id remains possible, so the row ends there; the stop string itself is cut from the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import torch

from engine import SamplingParams
from flexgen_wrangle.encoding import PromptEncoder
from flexgen_wrangle.tasks.base import strip_stop


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [text.find(word) for word in stop if word and word in text]
    return text[: min(cuts)] if cuts else text


class StopStrings:
    """Logits processor: force a stop id once the row's recent text contains a stop string."""

    def __init__(self, encoder: PromptEncoder, stop: Sequence[str], stop_id: int) -> None:
        self._encoder, self._stop, self._stop_id = encoder, list(stop), stop_id
        self._window = max(len(word.encode()) for word in self._stop) + 1  # tokens >= 1 byte

    def __call__(self, row_idx: int, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        tail = self._encoder.decode(generated[-self._window :])
        if any(word in tail for word in self._stop):
            logits.fill_(float("-inf"))
            logits[self._stop_id] = 0.0
        return logits


class Generate:
    name = "generate"
    arrow_type = pa.string()
    min_new_positions = 1

    def __init__(self, encoder: PromptEncoder, stop_ids: Sequence[int], max_new_tokens: int = 64,
                 stop: Sequence[str] | str | None = None, prefix_text: str = "") -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(word, str) or not word for word in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {stop!r}")
        self.encoder, self.stop_ids, self.stop = encoder, list(stop_ids), stop
        self.max_new_tokens, self.prefix_text = max_new_tokens, prefix_text

    def row_text(self, text: str) -> str:
        return text

    def run(self, engine: Any, prompt_ids: list[list[int]], prefix: list[int] | None,
            max_new_tokens: int) -> list[list[int]]:
        watcher = None
        if self.stop and self.stop_ids:
            watcher = StopStrings(self.encoder, self.stop, self.stop_ids[0])
        params = SamplingParams(max_new_tokens=max_new_tokens,
                                stop_ids=tuple(self.stop_ids) or None, logits_processor=watcher)
        return engine.generate(prompt_ids, params, prefix=prefix)

    def parse(self, raw: list[int]) -> str:
        ids, _ = strip_stop(raw, self.stop_ids)
        return cut_at_stop(self.encoder.decode(ids), self.stop)

    def output_tokens(self, raw: list[int]) -> int:
        return len(raw)

    def prefix_too_long(self, prefix_tokens: int, positions: int) -> ValueError:
        return ValueError(f"the template's shared text before the row takes {prefix_tokens} "
                          f"tokens; the model has {positions} positions, leaving no room for a "
                          "row and its answer: shorten it")
