"""Column in, column out: NULLs skipped, identical inputs computed once, rows sorted by token
length into blocks, the shared prefix (instruction, few-shot examples) computed once per engine
call, results restored to input order, unparseable rows NULL and counted, stats and progress.

The column is taken in windows of `window_rows` distinct inputs so that token ids are never held
for a whole huge column; sorting by length happens within a window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from flexgen_wrangle.encoding import shared_prefix
from flexgen_wrangle.errors import ParseError
from flexgen_wrangle.stats import RunStats
from flexgen_wrangle.tasks.base import Task


@dataclass(frozen=True)
class PipelineOptions:
    dedup: bool = True  # compute identical inputs once
    bucket: bool = True  # sort rows by token length before cutting blocks
    share_prefix: bool = True  # run the shared prompt prefix once per engine call
    block_rows: int | None = None  # rows per engine call; None: the engine policy's block size
    window_rows: int = 16384  # distinct rows tokenized and sorted together
    progress: bool = True


@dataclass
class Distinct:
    """The column's non-NULL values, each once, and where each input row's result comes from."""

    texts: list[str] = field(default_factory=list)
    first_row: list[int] = field(default_factory=list)  # an input row of each distinct value
    counts: list[int] = field(default_factory=list)  # input rows per distinct value
    of_row: list[int | None] = field(default_factory=list)  # distinct index per row; None: NULL

    @classmethod
    def of(cls, values: list[str | None], dedup: bool) -> Distinct:
        found, index = cls(), {}
        for row_idx, value in enumerate(values):
            if value is None:
                found.of_row.append(None)
                continue
            key = value if dedup else row_idx
            if key not in index:
                index[key] = len(found.texts)
                found.texts.append(value)
                found.first_row.append(row_idx)
                found.counts.append(0)
            found.of_row.append(index[key])
            found.counts[index[key]] += 1
        return found


@dataclass
class Group:
    """Rows that share one prefix (None: full prompts): (distinct index, row ids) pairs."""

    prefix: list[int] | None
    items: list[tuple[int, list[int]]]


def run_column(llm: Any, task: Task, texts: pa.Array,
               options: PipelineOptions | None = None) -> tuple[pa.Array, RunStats]:
    """Run `task` over a text column; returns (results in input order, stats)."""
    options = options or PipelineOptions()
    begin = time.perf_counter()
    values = texts.to_pylist()
    distinct = Distinct.of(values, options.dedup)
    stats = RunStats(task.name, rows=len(values), computed_rows=len(distinct.texts))
    stats.null_rows = sum(index is None for index in distinct.of_row)
    check_prefix(llm, task)
    results: dict[int, Any] = {}
    with tqdm(total=len(values), unit="rows", desc=f"flexgen {task.name}",
              disable=not options.progress) as bar:
        bar.update(stats.null_rows)
        for start in range(0, len(distinct.texts), options.window_rows):
            window = range(start, min(start + options.window_rows, len(distinct.texts)))
            _run_window(llm, task, distinct, window, options, stats, results, bar)
        stats.plan = llm.plan_text if distinct.texts else ""
    out = [None if index is None else results.get(index) for index in distinct.of_row]
    stats.seconds = time.perf_counter() - begin
    return pa.array(out, type=task.arrow_type), stats


def _run_window(llm: Any, task: Task, distinct: Distinct, window: range,
                options: PipelineOptions, stats: RunStats, results: dict, bar: tqdm) -> None:
    groups = _groups(llm, task, distinct, window, options.share_prefix, stats, bar)
    if not groups:  # every row of the window was too long for the model
        return
    began = time.perf_counter()
    engine = _prepare_engine(llm, task, groups, len(distinct.texts))
    stats.setup_seconds += time.perf_counter() - began
    block_rows = max(1, options.block_rows or engine.policy.block_size)
    for group in groups:
        fits = list(group.items)
        if options.bucket:
            fits.sort(key=lambda item: len(item[1]))
        for block in _chunks(fits, block_rows):
            _run_block(llm, task, group.prefix, block, distinct, stats, results)
            bar.update(sum(distinct.counts[index] for index, _ in block))


def _prepare_engine(llm: Any, task: Task, groups: list[Group], rows: int) -> Any:
    """The engine, planned for this column's workload if it is not built yet."""
    lengths = [len(ids) for group in groups for _, ids in group.items]
    prefix_len = len(groups[0].prefix or [])
    room = llm.max_positions - prefix_len - max(lengths)
    gen_len = max(1, min(max(task.min_new_positions, task.max_new_tokens), room))
    return llm.prepare(rows, lengths, gen_len, prefix_len)


def check_prefix(llm: Any, task: Task) -> None:
    """The prompt's shared part (instruction, labels, schema) leaves room for a row and the
    answer; otherwise no row could ever fit, and the task is refused before any model work."""
    encoder = llm.encoder
    prefix = encoder.encode_prefix(encoder.frame(task.prefix_text))
    if len(prefix) + 1 + task.min_new_positions > llm.max_positions:
        raise task.prefix_too_long(len(prefix), llm.max_positions)


def _groups(llm: Any, task: Task, distinct: Distinct, window: range, share_prefix: bool,
            stats: RunStats | None = None, bar: tqdm | None = None) -> list[Group]:
    """Tokenize the window; rows too long for the model fail (NULL, counted in `stats`, never
    cut to fit; left out without `stats`, as when sampling a workload); rows whose ids start
    with the shared prefix form the first group."""
    encoder = llm.encoder
    frame = encoder.frame(task.prefix_text)
    max_tokens = llm.max_positions - task.min_new_positions  # of a whole prompt
    kept = []
    for index in window:
        if encoder.surely_too_long(distinct.texts[index], max_tokens):
            _too_long(task, llm, distinct, index, f"more than {max_tokens}", stats, bar)
        else:
            kept.append(index)
    full = []
    texts = [task.row_text(distinct.texts[index]) for index in kept]
    for index, ids in zip(kept, encoder.encode(frame, texts, max_tokens), strict=True):
        if len(ids) > max_tokens:  # cut at max_tokens + 1
            _too_long(task, llm, distinct, index, f"more than {max_tokens}", stats, bar)
        else:
            full.append((index, ids))
    if not full:
        return []
    prefix = shared_prefix(encoder.encode_prefix(frame), full[0][1]) if share_prefix else []
    if not prefix:
        return [Group(None, full)]
    shared, alone = [], []
    for index, ids in full:
        if len(ids) > len(prefix) and ids[: len(prefix)] == prefix:
            shared.append((index, ids[len(prefix):]))
        else:
            alone.append((index, ids))
    return [group for group in (Group(prefix, shared), Group(None, alone)) if group.items]


def _too_long(task: Task, llm: Any, distinct: Distinct, index: int, tokens: str,
              stats: RunStats | None, bar: tqdm | None) -> None:
    if stats is None or bar is None:
        return
    reason = (f"prompt too long: {tokens} tokens ({len(distinct.texts[index]):,} characters); "
              f"the model has {llm.max_positions} positions and {task.name} needs "
              f"{task.min_new_positions} of them after the prompt. Rows that do not fit are "
              "NULL, never cut: shorten the text to keep it")
    stats.add_failure(distinct.first_row[index], reason, distinct.counts[index])
    bar.update(distinct.counts[index])


def _run_block(llm: Any, task: Task, prefix: list[int] | None, block: list[tuple[int, list[int]]],
               distinct: Distinct, stats: RunStats, results: dict) -> None:
    prompts = [ids for _, ids in block]
    longest = len(prefix or []) + max(len(ids) for ids in prompts)
    max_new = max(1, min(task.max_new_tokens, llm.max_positions - longest))
    raws = task.run(llm.engine, prompts, prefix, max_new)
    stats.prompt_tokens += len(prefix or []) + sum(len(ids) for ids in prompts)
    for (index, _), raw in zip(block, raws, strict=True):
        stats.output_tokens += task.output_tokens(raw)
        try:
            results[index] = task.parse(raw)
        except ParseError as err:
            stats.add_failure(distinct.first_row[index], err.message, distinct.counts[index])


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
