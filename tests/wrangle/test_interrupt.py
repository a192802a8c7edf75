"""Ctrl-C (SIGINT) during a long column: the call stops within seconds, the engine's I/O
threads are idle and its block's files and charges gone, the `LLM` handle runs the next call
right; `flexgen-wrangle run` exits 130 (within 4 s here) with nothing left in its temp dir, and `--resume`
completes to the uninterrupted output."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import flexgen_wrangle as fw
from flexgen_wrangle import cli
from tests.conftest import CTRL_C_DEFAULT
from tests.engine.test_interrupt import InterruptAfter
from tests.wrangle.kill9_child import OFFLOADED, column

pytestmark = pytest.mark.usefixtures("ctrl_c_raises")  # see tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
SEED = 99


def test_ctrl_c_during_a_long_column(wrangle_model_dir, tmp_path):
    rng, small = random.Random(SEED), pa.array(column(8))
    options = {"policy": OFFLOADED, "dtype": torch.float32, "progress": False}
    with fw.LLM(wrangle_model_dir, offload_dir=tmp_path / "ref", **options) as alone:
        expected = alone.classify(small, ["yes", "no"])
    with fw.LLM(wrangle_model_dir, offload_dir=tmp_path / "offload", **options) as llm:
        llm.classify(small, ["yes", "no"])  # the engine is built
        engine = llm.engine
        files = set(engine.offload_dir.iterdir())
        used = dict(engine._tiers.ledger.used)
        delay = rng.uniform(0.3, 1.5)
        with InterruptAfter(delay) as interrupt, pytest.raises(KeyboardInterrupt):
            llm.classify(pa.array(column(5000)), ["yes", "no"])  # about a minute
        assert time.monotonic() - interrupt.sent[0] < 3.0, delay
        time.sleep(0.3)
        assert engine._pool._work_queue.empty() and not engine._tiers.staging._kinds, delay
        assert dict(engine._tiers.ledger.used) == used and set(engine.offload_dir.iterdir()) == files
        assert llm.classify(small, ["yes", "no"]).equals(expected), delay
        assert llm.engine is engine  # the same handle, the same engine


def _argv(model_dir: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(source), "--column", "text", "--classify", "yes,no", "--model",
            str(model_dir), "--output", str(out), "--block-rows", "40", "--no-progress", *extra]


def test_ctrl_c_of_run_then_resume(wrangle_model_dir, tmp_path):
    source, tmp, out = tmp_path / "in.parquet", tmp_path / "tmp", tmp_path / "out.parquet"
    tmp.mkdir()
    pq.write_table(pa.table({"id": list(range(400)), "text": column(400)}), source)
    assert cli.main(_argv(wrangle_model_dir, source, tmp_path / "ref.parquet")) == 0
    child = subprocess.Popen([sys.executable, "-m", "flexgen_wrangle.cli",
                              *_argv(wrangle_model_dir, source, out)], cwd=ROOT,
                             env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=CTRL_C_DEFAULT)
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + 120
    while not list(parts.glob("part-*.parquet")):  # mid-run: one block written
        assert time.monotonic() < deadline and child.poll() is None, child.stderr
        time.sleep(0.02)
    sent = time.monotonic()
    for _ in range(3):  # pressed again if it runs on, as a user would (one may be swallowed)
        child.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=4.0)  # its exit closes the engine and tears torch down
            break
    _, stderr = child.communicate(timeout=60)
    assert time.monotonic() - sent < 12.0
    assert child.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert not list(tmp.iterdir())  # its offload directory removed on the way out
    assert not out.exists() and list(parts.glob("part-*.parquet"))
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "ref.parquet"))
