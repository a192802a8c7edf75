"""Structured output: a thin backend over xgrammar, plugged into the engine's per-row logits hook.

`JsonConstraints` compiles a JSON schema once per (LLM, schema); each engine call gets a fresh
`GrammarProcessor` whose per-row matchers accept the tokens sampled so far, then mask the next
token's logits to what the grammar allows. Special tokens other than the stop ids are masked
too: a grammar sees them as literal text, the decoder drops them. A processor pickles (its
grammar and tokenizer info as xgrammar's JSON), so pipeline stages run it in the last stage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
import xgrammar as xg

from flexgen_wrangle.errors import SchemaError

JSON_SEPARATORS = (",", ":")  # compact JSON, as the prompts show and the demo model learnt


class JsonConstraints:
    """Compiles JSON schemas for one tokenizer; `processor` makes a per-call logits hook."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: Sequence[int]) -> None:
        self.vocab_size, self.stop_ids = vocab_size, list(stop_ids)
        info = xg.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                 stop_token_ids=self.stop_ids)
        self._compiler = xg.GrammarCompiler(info)
        self.banned_ids = sorted(
            set(tokenizer.all_special_ids) - set(self.stop_ids) - {None}
        )

    def compile(self, json_schema: dict, lead: str = "") -> xg.CompiledGrammar:
        """The grammar of `lead` followed by one compact JSON value matching `json_schema`."""
        try:
            grammar = xg.Grammar.from_json_schema(
                json.dumps(json_schema), any_whitespace=False, separators=JSON_SEPARATORS
            )
        except (RuntimeError, ValueError) as err:
            raise SchemaError(f"the grammar backend rejects the schema: {err}") from None
        if lead:
            grammar = xg.Grammar.concat(xg.Grammar.from_ebnf(f"root ::= {json.dumps(lead)}"),
                                        grammar)
        return self._compiler.compile_grammar(grammar)

    def processor(self, compiled: xg.CompiledGrammar) -> GrammarProcessor:
        return GrammarProcessor(compiled, self.vocab_size, self.stop_ids, self.banned_ids)


class GrammarProcessor:
    """`(row_idx, generated_ids_so_far, logits[V]) -> logits[V]` for one engine call, and the
    same for a whole decode step at once (`process_batch`, one mask kernel for all rows)."""

    def __init__(self, compiled: xg.CompiledGrammar, vocab_size: int, stop_ids: list[int],
                 banned_ids: list[int]) -> None:
        self._compiled, self._stop_ids, self._banned = compiled, stop_ids, banned_ids
        self._matchers: dict[int, tuple[xg.GrammarMatcher, int]] = {}  # row -> (matcher, seen)
        self._bitmask = xg.allocate_token_bitmask(1, vocab_size)  # [rows, ceil(V / 32)] int32
        self._vocab_size = vocab_size

    def __call__(self, row_idx: int, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        return self.process_batch([row_idx], [generated], logits.unsqueeze(0))[0]

    def process_batch(self, row_ids: Sequence[int], generated: Sequence[Sequence[int]],
                      logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V]: each row masked to what its grammar allows next, given its ids so
        far; a row whose grammar has ended (or, impossibly, refused an id) may only stop."""
        if self._bitmask.shape[0] < len(row_ids):
            self._bitmask = xg.allocate_token_bitmask(len(row_ids), self._vocab_size)
        masked, ended = [], []
        for row, (row_id, ids) in enumerate(zip(row_ids, generated, strict=True)):
            matcher = self._advance(row_id, ids)
            if matcher is None:
                ended.append(row)
            else:
                matcher.fill_next_token_bitmask(self._bitmask, row)
                masked.append(row)
        if masked:
            xg.apply_token_bitmask_inplace(logits, self._bitmask.to(logits.device),
                                           vocab_size=self._vocab_size, indices=masked)
        if self._banned:
            logits[:, self._banned] = float("-inf")
        if ended:
            logits[ended] = float("-inf")
            logits[ended, self._stop_ids[0]] = 0.0
        return logits

    def _advance(self, row_id: int, generated: Sequence[int]) -> xg.GrammarMatcher | None:
        """The row's matcher after every id generated so far; None where only a stop may
        follow: its grammar has ended, or refused an id (cannot happen under the mask)."""
        matcher, seen = self._matchers.get(row_id) or (xg.GrammarMatcher(self._compiled), 0)
        for token in generated[seen:]:
            if not matcher.accept_token(int(token)):
                return None
        self._matchers[row_id] = (matcher, len(generated))
        return None if matcher.is_terminated() else matcher

    def __reduce__(self) -> tuple:
        """Pickled as its compiled grammar and tokenizer info in xgrammar's JSON; the matchers
        of a call in progress are not carried (a processor travels before its call starts)."""
        info = self._compiled.tokenizer_info
        return (_rebuild_processor, (self._compiled.serialize_json(), info.serialize_json(),
                                     self._vocab_size, self._stop_ids, self._banned))


def _rebuild_processor(grammar_json: str, tokenizer_info_json: str, vocab_size: int,
                       stop_ids: list[int], banned_ids: list[int]) -> GrammarProcessor:
    info = xg.TokenizerInfo.deserialize_json(tokenizer_info_json)
    compiled = xg.CompiledGrammar.deserialize_json(grammar_json, info)
    return GrammarProcessor(compiled, vocab_size, stop_ids, banned_ids)

