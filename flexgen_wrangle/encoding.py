"""Prompt text -> token ids: the chat template when the tokenizer has one, and the split of each
row's ids into the column's shared prefix and the row's own part.

A prompt is `prefix + row` (see `flexgen_wrangle.prompts`). With a chat template the whole prompt
is the user message and the answer follows the assistant header; without one the prompt is
plain text after BOS and the answer follows after a space ("Label: positive").

Rows longer than the model's context are never cut to fit (the answer would be about a different
text): `encode(..., max_tokens=N)` returns such a row's ids cut at N + 1, enough to know it does
not fit, so that a window of 1 MB rows never holds their full ids; `surely_too_long` skips the
tokenizer for a text that has more characters than N tokens could ever cover.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

_SENTINEL = "\x00FLEXGEN_ROW\x00"
# A normalizer may shorten text before it is split (NFC composes a letter and its accents): a
# text is surely too long only past this many times the characters of the longest token.
_NORMALIZE_SLACK = 4


@dataclass(frozen=True)
class Frame:
    """Rendered text around a row: `head + row_text + tail` is one full prompt."""

    head: str
    tail: str


class PromptEncoder:
    def __init__(self, tokenizer, use_chat: bool | None = None) -> None:
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat = has_template if use_chat is None else use_chat
        if self.use_chat and not has_template:
            raise ValueError("use_chat=True, but the tokenizer has no chat template")
        self._longest_token: int | None = None  # characters of the vocabulary's longest token

    @property
    def answer_lead(self) -> str:
        """What comes between the prompt and the answer: nothing after a chat header."""
        return "" if self.use_chat else " "

    def frame(self, prefix_text: str) -> Frame:
        if not self.use_chat:
            return Frame(prefix_text, "")
        messages = [{"role": "user", "content": prefix_text + _SENTINEL}]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        head, _, tail = rendered.partition(_SENTINEL)
        return Frame(head, tail)

    def encode(self, frame: Frame, row_texts: Sequence[str],
               max_tokens: int | None = None) -> list[list[int]]:
        """Full prompt ids per row (BOS included when the tokenizer adds one); with
        `max_tokens`, a longer row's ids are cut at `max_tokens + 1` (it does not fit)."""
        if not row_texts:
            return []
        texts = [frame.head + text + frame.tail for text in row_texts]
        cut = {} if max_tokens is None else {"truncation": True, "max_length": max_tokens + 1}
        return self.tokenizer(texts, add_special_tokens=not self.use_chat, **cut)["input_ids"]

    def surely_too_long(self, text: str, max_tokens: int) -> bool:
        """Whether `text` alone has more characters than `max_tokens` tokens could cover."""
        if self._longest_token is None:
            self._longest_token = max(map(len, self.tokenizer.get_vocab()), default=1)
        return len(text) > max_tokens * self._longest_token * _NORMALIZE_SLACK

    def encode_prefix(self, frame: Frame) -> list[int]:
        """Ids of the shared head alone (may differ from the rows' at the boundary)."""
        if not frame.head:
            return []
        return self.tokenizer(frame.head, add_special_tokens=not self.use_chat)["input_ids"]

    def encode_answer(self, text: str) -> list[int]:
        """Ids of an answer (a label) as it follows the prompt."""
        return self.tokenizer(self.answer_lead + text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def shared_prefix(prefix_ids: list[int], first_row: list[int]) -> list[int]:
    """The longest common start of the head's ids and a row's ids: a merge across the boundary
    (e.g. a trailing space joined to the row's first word) shortens it by a token or two."""
    length = 0
    for head_id, row_id in zip(prefix_ids, first_row, strict=False):
        if head_id != row_id:
            break
        length += 1
    return prefix_ids[:length]
