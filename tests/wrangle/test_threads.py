"""One `LLM` used from 4 Python threads at once, as DuckDB's workers use it: every thread's
results equal the single-threaded ones, nothing deadlocks (every wait has a timeout), one
engine is built, and the ledger ends where it started."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import torch

import flexgen_wrangle as fw
from engine import Placement, Policy

WORDS = ["good", "bad", "fine", "awful", "ok", "great", "poor", "nice"]
THREADS, TIMEOUT_S = 4, 120
OFFLOADED = Policy(4, 2, Placement(0, 50, 50), Placement(0, 50, 50), Placement(0, 50, 50))


def _column(thread: int) -> pa.Array:
    return pa.array([None if row % 9 == 4 else
                     f"{WORDS[(row + thread) % 8]} {WORDS[(row * 3 + thread) % 8]} {row}"
                     for row in range(24)])


def _work(llm: fw.LLM, thread: int) -> tuple[list, list]:
    labels = llm.classify(_column(thread), ["yes", "no"]).to_pylist()
    texts = llm.generate(_column(thread).slice(0, 8), max_new_tokens=4).to_pylist()
    return labels, texts


def _in_threads(llm: fw.LLM) -> list[tuple[list, list]]:
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(_work, llm, thread) for thread in range(THREADS)]
        return [future.result(timeout=TIMEOUT_S) for future in futures]


def _used(llm: fw.LLM) -> dict[str, int]:
    return {tier: used for tier, used in llm.engine._tiers.ledger.used.items() if used}


def test_four_threads_share_one_llm(wrangle_model_dir, tmp_path, monkeypatch):
    """The shared LLM's budgets are what one call at a time peaked at (plus a quarter): calls
    that overlapped on the engine would need about four times that."""
    options = {"progress": False, "dtype": torch.float32, "policy": OFFLOADED}
    with fw.LLM(wrangle_model_dir, offload_dir=tmp_path / "alone", **options) as alone:
        expected = [_work(alone, thread) for thread in range(THREADS)]
        peaks = alone.engine.stats.peak_bytes
    memory = {tier: int(1.25 * peaks[tier]) + 4096 for tier in ("device", "host")}
    with fw.LLM(wrangle_model_dir, offload_dir=tmp_path / "shared", memory=memory,
                **options) as llm:
        builds = []
        real_build = fw.LLM._build
        monkeypatch.setattr(fw.LLM, "_build", lambda self, *args, **kwargs: (
            builds.append(1), real_build(self, *args, **kwargs)))
        assert _in_threads(llm) == expected  # all four start with no engine built
        assert len(builds) == 1, "each thread built its own engine"
        used = _used(llm)
        assert _in_threads(llm) == expected
        assert _used(llm) == used
        assert len(list((tmp_path / "shared").iterdir())) == 1  # one offload directory
