"""Ctrl-C (SIGINT) during a long offloaded generate: the call stops within seconds, its I/O
threads are idle, its files and charges are gone, and the same engine then runs right."""

from __future__ import annotations

import dataclasses
import random
import signal
import threading
import time

import pytest
import torch

from engine import Engine, Placement, Policy
from engine.sampling import SamplingParams
from engine.storage import disk

pytestmark = pytest.mark.usefixtures("ctrl_c_raises")  # see tests/conftest.py

PROMPTS = [[3 + row % 50, 4, 5 + row % 7, 6] for row in range(64)]
LONG = SamplingParams(max_new_tokens=100, ignore_eos=True)
SHORT = SamplingParams(max_new_tokens=5, ignore_eos=True)
OFFLOADED = Policy(4, 2, Placement(0, 30, 70), Placement(0, 30, 70), Placement(0, 50, 50))
SEED = 1234  # the interrupt moments; a failure names the one it hit


class InterruptAfter:
    """SIGINT to the main thread `delay_s` after entering, then again every `again_s` (as a
    user presses Ctrl-C again: Python swallows a KeyboardInterrupt raised inside a garbage
    collector's weakref callback, printing "Exception ignored"); `sent` gets the moments.
    Exiting stops it, so a call that ended first is never hit afterwards."""

    def __init__(self, delay_s: float, again_s: float = 1.0) -> None:
        self.sent: list[float] = []
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fire, args=(delay_s, again_s), daemon=True)

    def _fire(self, delay_s: float, again_s: float) -> None:
        wait = delay_s
        while not self._stop.wait(wait):
            self.sent.append(time.monotonic())
            signal.pthread_kill(self._main, signal.SIGINT)
            wait = again_s

    def __enter__(self) -> InterruptAfter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _used(eng: Engine) -> dict[str, int]:
    return {tier: used for tier, used in eng._tiers.ledger.used.items() if used}


def _idle(eng: Engine) -> bool:
    """No I/O queued or running on the engine's pool, no staging buffer lent out."""
    queue_empty = eng._pool is None or eng._pool._work_queue.empty()
    return queue_empty and not eng._tiers.staging._kinds


@pytest.fixture(scope="module")
def reference(model_dirs) -> list[list[int]]:
    with Engine.from_pretrained(model_dirs("llama"), dtype=torch.float32) as eng:
        return eng.generate(PROMPTS[:8], SHORT)


class SlowDisk:
    """Offload reads take 20 ms more (a busy disk), so an interrupt finds reads queued and
    running on the I/O pool; `running` counts those in progress."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.running, self._lock, self._real = 0, threading.Lock(), disk.read_file
        monkeypatch.setattr(disk, "read_file", self.read_file)

    def read_file(self, *args, **kwargs):
        with self._lock:
            self.running += 1
        try:
            time.sleep(0.02)
            return self._real(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


@pytest.mark.parametrize("overlap, slow_disk", [(True, False), (True, True), (False, False)])
def test_ctrl_c_during_a_long_generate(model_dirs, reference, tmp_path, monkeypatch, overlap,
                                       slow_disk):
    """With overlap the interrupt meets I/O queued and running on the pool (many of them on a
    slow disk), which must all be over when the call returns; without, I/O in the interrupted
    thread itself."""
    rng = random.Random(SEED)
    policy = dataclasses.replace(OFFLOADED, overlap=overlap)
    slow = SlowDisk(monkeypatch) if slow_disk else None
    with Engine.from_pretrained(model_dirs("llama"), policy=policy, dtype=torch.float32,
                                offload_dir=tmp_path) as eng:
        weights = {path.name for path in eng.offload_dir.iterdir()}
        assert eng.generate(PROMPTS[:8], SHORT) == reference
        used = _used(eng)
        for attempt in range(3 if overlap else 2):
            delay = rng.uniform(0.2, 1.5)
            with InterruptAfter(delay) as interrupt, pytest.raises(KeyboardInterrupt):
                eng.generate(PROMPTS, LONG)  # ~20 s uninterrupted
            assert time.monotonic() - interrupt.sent[0] < 3.0, (attempt, delay)
            assert slow is None or slow.running == 0, "I/O still running after the call"
            time.sleep(0.3)  # a straggling I/O thread would act now
            assert _idle(eng), (attempt, delay)
            assert _used(eng) == used, (attempt, delay)
            assert {path.name for path in eng.offload_dir.iterdir()} == weights
            assert eng.generate(PROMPTS[:8], SHORT) == reference, (attempt, delay)



def test_ctrl_c_while_a_finished_block_is_freed(model_dirs, reference, tmp_path, monkeypatch):
    """The moment between a block's last token and its homes being freed: a Ctrl-C there
    still frees every home and file of the block."""
    with Engine.from_pretrained(model_dirs("llama"), policy=OFFLOADED, dtype=torch.float32,
                                offload_dir=tmp_path) as eng:
        weights = {path.name for path in eng.offload_dir.iterdir()}
        assert eng.generate(PROMPTS[:8], SHORT) == reference
        used, real_free, real_free_block, calls = _used(eng), eng._tiers.free, eng._free_block, []

        def free(placed):
            real_free(placed)
            calls.append(1)
            if len(calls) == 2:  # one home freed, the others not yet
                raise KeyboardInterrupt

        def free_block(*args, **kwargs):
            monkeypatch.setattr(eng._tiers, "free", free)
            try:
                real_free_block(*args, **kwargs)
            finally:
                monkeypatch.setattr(eng._tiers, "free", real_free)

        monkeypatch.setattr(eng, "_free_block", free_block)
        with pytest.raises(KeyboardInterrupt):
            eng.generate(PROMPTS[:8], SHORT)
        monkeypatch.undo()
        assert _idle(eng) and _used(eng) == used
        assert {path.name for path in eng.offload_dir.iterdir()} == weights
        assert eng.generate(PROMPTS[:8], SHORT) == reference


@pytest.mark.parametrize("method", ["hand_over", "fetch"])
def test_ctrl_c_between_a_homes_birth_and_its_record(model_dirs, reference, tmp_path,
                                                     monkeypatch, method):
    """`hand_over` made a disk home the block has not recorded yet, or `take` fetched one it
    has already dropped from its tables and not yet freed: the interrupt lands there, and the
    file must still go. Without overlap these run in the thread Ctrl-C interrupts."""
    policy = dataclasses.replace(OFFLOADED, overlap=False)
    with Engine.from_pretrained(model_dirs("llama"), policy=policy, dtype=torch.float32,
                                offload_dir=tmp_path) as eng:
        weights = {path.name for path in eng.offload_dir.iterdir()}
        assert eng.generate(PROMPTS[:8], SHORT) == reference
        used, real, calls = _used(eng), getattr(eng._tiers, method), []

        def interrupted(first, *args, **kwargs):
            out = real(first, *args, **kwargs)
            on_disk = first == "disk" if method == "hand_over" else first.tier == "disk"
            if on_disk and (method == "hand_over" or args[0].startswith("hidden state")):
                calls.append(1)
                if len(calls) == 25:
                    raise KeyboardInterrupt
            return out

        monkeypatch.setattr(eng._tiers, method, interrupted)
        with pytest.raises(KeyboardInterrupt):
            eng.generate(PROMPTS, LONG)
        monkeypatch.undo()
        assert len(calls) == 25
        assert _idle(eng) and _used(eng) == used
        assert {path.name for path in eng.offload_dir.iterdir()} == weights
        assert eng.generate(PROMPTS[:8], SHORT) == reference


def test_a_second_ctrl_c_waits_for_the_cleanup(model_dirs, reference, tmp_path, monkeypatch):
    """Ctrl-C pressed again while the interrupted block is being cleaned up: the cleanup still
    runs to its end (every file and charge gone), and the call then raises KeyboardInterrupt."""
    policy = dataclasses.replace(OFFLOADED, overlap=False)  # stores in the interrupted thread
    with Engine.from_pretrained(model_dirs("llama"), policy=policy, dtype=torch.float32,
                                offload_dir=tmp_path) as eng:
        weights = {path.name for path in eng.offload_dir.iterdir()}
        assert eng.generate(PROMPTS[:8], SHORT) == reference
        used, real_hand_over, real_free = _used(eng), eng._tiers.hand_over, eng._tiers.free
        homes, frees_after = [], []

        def hand_over(*args, **kwargs):
            homes.append(1)
            if len(homes) == 30:  # the first Ctrl-C
                raise KeyboardInterrupt
            return real_hand_over(*args, **kwargs)

        def free(placed):
            if len(homes) >= 30:
                frees_after.append(1)
                if len(frees_after) == 2:  # the cleanup has just begun freeing the homes
                    signal.raise_signal(signal.SIGINT)
            real_free(placed)

        monkeypatch.setattr(eng._tiers, "hand_over", hand_over)
        monkeypatch.setattr(eng._tiers, "free", free)
        with pytest.raises(KeyboardInterrupt):
            eng.generate(PROMPTS, LONG)
        monkeypatch.undo()
        assert len(frees_after) > 2, "the cleanup stopped at the second Ctrl-C"
        time.sleep(0.3)  # cancelled I/O leaves the pool's queue
        assert _idle(eng) and _used(eng) == used
        assert {path.name for path in eng.offload_dir.iterdir()} == weights
        assert eng.generate(PROMPTS[:8], SHORT) == reference


def test_ctrl_c_with_a_shared_prefix_frees_the_prefix(model_dirs, tmp_path, monkeypatch):
    """The prefix's KV cache lives for the whole call, beyond any block: an interrupt in a
    later block removes it as well."""
    with Engine.from_pretrained(model_dirs("llama"), policy=OFFLOADED, dtype=torch.float32,
                                offload_dir=tmp_path) as eng:
        weights = {path.name for path in eng.offload_dir.iterdir()}
        used, real, blocks = _used(eng), eng._run_block, []

        def run_block(*args, **kwargs):
            blocks.append(1)
            if len(blocks) == 2:  # the prefix was block 1
                assert {path.name for path in eng.offload_dir.iterdir()} != weights
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(eng, "_run_block", run_block)
        with pytest.raises(KeyboardInterrupt):
            eng.generate(PROMPTS[:8], SHORT, prefix=[7, 8, 9, 10, 11, 12])
        assert _used(eng) == used
        assert {path.name for path in eng.offload_dir.iterdir()} == weights
