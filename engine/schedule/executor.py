"""Runs a token's steps: loads and stores go to a thread pool, computes run here in order.

The executor knows the step types and their data dependencies, not the model: a `Runner`
provides the actual loads, stores and computes. A load of something whose store is still in
flight waits for that store; a hidden-state load issued before its producer ran (possible with
one GPU batch) is deferred to the compute that needs it.

A token that fails or is interrupted (Ctrl-C arrives in the computing thread) leaves I/O on the
pool; `cancel` drops what has not started and waits for what has, and hands back the values of
the loads that finished unused, so the caller can release them and no thread still touches the tiers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from engine.schedule.steps import (
    Compute,
    FreeWeights,
    LoadCache,
    LoadHidden,
    LoadWeights,
    Step,
    StoreCache,
)


class Runner(Protocol):
    def load_weights(self, layer: int) -> Any: ...
    def free_weights(self, layer: int, weights: Any) -> None: ...
    def load_cache(self, layer: int, batch: int) -> Any: ...
    def store_cache(self, layer: int, batch: int, cache: Any) -> None: ...
    def load_hidden(self, layer: int, batch: int) -> Any: ...
    def store_hidden(self, layer: int, batch: int, hidden: Any) -> None: ...
    def compute(self, layer: int, batch: int, weights: Any, cache: Any, hidden: Any) -> Any: ...


def _outcome(future: Future) -> Any:
    """A finished or running future's value once it ends; None if cancelled or failed (the
    failure being unwound, or one of its consequences)."""
    if future.cancelled():
        return None
    try:
        return future.result()
    except Exception:
        return None


def _done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class Executor:
    """One per engine; `pool` None runs every step synchronously (overlap off)."""

    def __init__(self, runner: Runner, pool: ThreadPoolExecutor | None) -> None:
        self.runner = runner
        self.pool = pool
        self.compute_s = 0.0
        self.io_wait_s = 0.0
        self._stores: dict[tuple[str, int, int], Future] = {}  # in-flight stores by resource
        # the running token's loads not yet used (the run's own dicts, for `cancel`): a used
        # load is popped from them, so nothing here outlives its use
        self._unused: tuple[dict, ...] = ()
        self._computed: dict = {}  # outputs of computes not yet handed to their stores
        self._inputs: list = []  # the running compute's cache and hidden state

    def _submit(self, fn: Callable[..., Any], *args: Any, after: Future | None = None) -> Future:
        def task() -> Any:
            if after is not None:
                after.result()
            return fn(*args)

        return self.pool.submit(task) if self.pool is not None else _done(task())

    def _wait(self, future: Future) -> Any:
        begin = time.perf_counter()
        value = future.result()
        self.io_wait_s += time.perf_counter() - begin
        return value

    def run(self, steps: list[Step], active: set[int]) -> None:
        """Run one token's steps for the GPU batches in `active`."""
        weights: dict[int, Future] = {}
        caches: dict[tuple[int, int], Future] = {}
        hiddens: dict[tuple[int, int], Future] = {}
        outputs: dict[tuple[int, int], Any] = {}
        self._unused = (weights, caches, hiddens)
        self._computed = outputs
        for step in steps:
            if isinstance(step, LoadWeights | FreeWeights):
                self._weights_step(step, weights)
            elif step.batch not in active:
                continue
            elif isinstance(step, LoadCache):
                key = ("cache", step.layer, step.batch)
                caches[step.layer, step.batch] = self._submit(
                    self.runner.load_cache, step.layer, step.batch, after=self._stores.get(key)
                )
            elif isinstance(step, LoadHidden):
                producer = self._stores.get(("hidden", step.layer - 1, step.batch))
                if producer is not None:  # else deferred to the compute
                    hiddens[step.layer, step.batch] = self._submit(
                        self.runner.load_hidden, step.layer, step.batch, after=producer
                    )
            elif isinstance(step, Compute):
                outputs[step.layer, step.batch] = self._compute(step, weights, caches, hiddens)
            else:
                self._store_step(step, caches, outputs)
        self.drain()
        self._unused, self._computed = (), {}

    def drain(self) -> None:
        """Wait for every in-flight store (end of a token, or before reading results)."""
        for future in self._stores.values():
            self._wait(future)
        self._stores.clear()

    def cancel(self) -> list[Any]:
        """After a failed or interrupted token: cancel the I/O not yet started, wait for the
        I/O running, and return what the unused loads produced and the computed outputs no
        store took (weights a compute used stay listed until their FreeWeights: the caller's
        release must be idempotent)."""
        loads = [future for unused in self._unused for future in unused.values()]
        stores = list(self._stores.values())
        for future in [*loads, *stores]:
            future.cancel()
        loaded = [_outcome(future) for future in loads]
        for future in stores:
            _outcome(future)
        computed = [value for pending in self._computed.values() for value in pending]
        computed += self._inputs
        self._unused, self._computed, self._inputs = (), {}, []
        self._stores.clear()
        return [value for value in loaded + computed if value is not None]

    def _weights_step(self, step: Step, weights: dict[int, Future]) -> None:
        if isinstance(step, LoadWeights):
            weights[step.layer] = self._submit(self.runner.load_weights, step.layer)
        else:
            self.runner.free_weights(step.layer, self._take(weights, step.layer))

    def _take(self, futures: dict, key: Any) -> Any:
        """Wait for `futures[key]`, then forget it (waited for while still listed: an interrupt
        during the wait leaves it to `cancel`)."""
        value = self._wait(futures[key])
        del futures[key]
        return value

    def _compute(self, step: Compute, weights: dict, caches: dict, hiddens: dict) -> Any:
        pair = (step.layer, step.batch)
        cache = self._take(caches, pair) if pair in caches else None
        if pair in hiddens:
            hidden = self._take(hiddens, pair)
        elif step.layer > 0:
            producer = ("hidden", step.layer - 1, step.batch)
            if producer in self._stores:
                self._take(self._stores, producer)
            hidden = self.runner.load_hidden(step.layer, step.batch)
        else:
            hidden = None
        layer_weights = self._wait(weights[step.layer])
        begin = time.perf_counter()
        self._inputs = [cache, hidden]  # for `cancel`, until the compute returns
        out = self.runner.compute(step.layer, step.batch, layer_weights, cache, hidden)
        self._inputs = []
        self.compute_s += time.perf_counter() - begin
        return [cache, out]  # emptied by the stores that take them

    def _store_step(self, step: Step, caches: dict, outputs: dict) -> None:
        """Hand one output of a compute to its store. The executor keeps no reference to what
        it handed over: a cache or hidden state lives only as long as its store needs it."""
        pending = outputs[step.layer, step.batch]
        if isinstance(step, StoreCache):
            key, fn, value = ("cache", step.layer, step.batch), self.runner.store_cache, pending[0]
            pending[0] = None
        else:
            key, fn, value = ("hidden", step.layer, step.batch), self.runner.store_hidden, pending[1]
            pending[1] = None
        if pending == [None, None]:
            del outputs[step.layer, step.batch]
        self._stores[key] = self._submit(fn, step.layer, step.batch, value)
