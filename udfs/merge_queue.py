"""One engine, many callers: calls that arrive together are merged into one pipeline run.

DuckDB calls a vectorised Python function once per 2,048-row chunk, from several worker threads
at once. The engine is not thread-safe, and one large run dedups, length-sorts and fills blocks
better than many small ones. So each `LLM` has one `MergeQueue` (`queue_for(llm)`), shared by
every connection and function it is registered on. There is no thread of its own: the first
caller that finds the engine idle leads. It waits `linger_s` for company, takes the waiting
calls of the oldest call's task (up to `max_rows` rows), runs them as one column and hands each
caller its slice; calls that arrive meanwhile wait for the next run. A leader keeps leading
until its own call is done, then the next waiting caller takes over.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from flexgen_wrangle.stats import RunStats

DEFAULT_MAX_ROWS = 16384  # rows of one merged run: the pipeline's window of distinct inputs
DEFAULT_LINGER_S = 0.005  # a DuckDB thread is back with its next chunk well within this


@dataclass
class _Call:
    task: Any
    texts: pa.Array
    sink: RunStats  # the calling function's stats; calls of one task share one sink
    result: pa.Array | None = None
    error: BaseException | None = None
    done: bool = False


class MergeQueue:
    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS,
                 linger_s: float = DEFAULT_LINGER_S) -> None:
        self.max_rows, self.linger_s = max_rows, linger_s
        self._cond = threading.Condition()
        self._waiting: list[_Call] = []
        self._leading = False
        self.runs = 0  # pipeline runs so far
        self.calls = 0  # calls served so far

    def run(self, llm: Any, task: Any, texts: pa.Array, sink: RunStats) -> pa.Array:
        """`task` over `texts` (results in order), merged with whatever else is waiting."""
        call = _Call(task, texts, sink)
        with self._cond:
            self._waiting.append(call)
            self._cond.notify_all()
            while self._leading and not call.done:
                self._cond.wait()
            lead = not call.done
            self._leading = self._leading or lead
        if lead:
            try:
                while not call.done:
                    self._run_batch(llm, self._take())
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        return call.result

    def _waiting_rows(self) -> int:
        return sum(len(call.texts) for call in self._waiting)

    def _take(self) -> list[_Call]:
        """After the linger: the oldest call's task, as many of its calls as fit."""
        with self._cond:
            self._cond.wait_for(lambda: self._waiting_rows() >= self.max_rows,
                                timeout=self.linger_s)
            task, rows, batch = self._waiting[0].task, 0, []
            for call in list(self._waiting):
                if call.task is task and (not batch or rows + len(call.texts) <= self.max_rows):
                    batch.append(call)
                    rows += len(call.texts)
                    self._waiting.remove(call)
            return batch

    def _run_batch(self, llm: Any, batch: list[_Call]) -> None:
        try:
            texts = pa.concat_arrays([call.texts for call in batch])
            result = llm.run(batch[0].task, texts, progress=False)
            batch[0].sink.merge(llm.last_stats)
            offset = 0
            for call in batch:
                call.result = result.slice(offset, len(call.texts))
                offset += len(call.texts)
        except BaseException as err:  # every caller of the run sees the failure
            for call in batch:
                call.error = err
        with self._cond:
            self.runs += 1
            self.calls += len(batch)
            for call in batch:
                call.done = True
            self._cond.notify_all()


# One queue per LLM, held only as long as the LLM lives: it is what serialises the LLM's one
# engine across connections and threads, so it cannot belong to a single registration.
_QUEUES: weakref.WeakKeyDictionary[Any, MergeQueue] = weakref.WeakKeyDictionary()
_QUEUES_LOCK = threading.Lock()


def queue_for(llm: Any) -> MergeQueue:
    with _QUEUES_LOCK:
        queue = _QUEUES.get(llm)
        if queue is None:
            queue = _QUEUES[llm] = MergeQueue()
        return queue
