"""kill -9 at a random moment of engine construction, a generate with disk-resident KV, the
pandas accessor, an Arrow stream and `flexgen-wrangle run`: the dead process's offload
directory survives it (nothing could clean up), and the next start removes it; the CLI's run
resumes to the uninterrupted output. The moments come from a seeded RNG: a failure names its
seed, and FLEXGEN_FAULT_SEED=N replays it."""

from __future__ import annotations

import json
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
from engine import Engine
from engine.storage.offload_dirs import OWNER_FILE, PREFIX
from flexgen_wrangle import cli
from tests.wrangle.kill9_child import OFFLOADED, column

ROOT = Path(__file__).resolve().parents[2]


def _seed() -> int:
    return int(os.environ.get("FLEXGEN_FAULT_SEED") or random.randrange(10**6))


def _offload_dirs(parent: Path, pid: int | None = None) -> list[Path]:
    """The engines' offload directories under `parent` (of process `pid`, when given)."""
    found = []
    for path in sorted(parent.glob(f"{PREFIX}*")):
        try:
            owner = json.loads((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if pid is None or owner["pid"] == pid:
            found.append(path)
    return found


def _kill_child(mode: str, model_dir: Path, parent: Path, rng: random.Random,
                latest_s: float, files: int = 0) -> Path:
    """Start the child, SIGKILL it a random moment (up to `latest_s`) after it says `started`
    and has written `files` offload files (at least one when it constructs); returns the
    offload directory it left."""
    child = subprocess.Popen([sys.executable, "-m", "tests.wrangle.kill9_child", mode,
                              str(model_dir), str(parent)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline().strip()
    assert line == "started", child.communicate(timeout=60)[1]
    deadline = time.monotonic() + 60
    files = max(files, int(mode == "construct"))
    while len(list(parent.glob(f"{PREFIX}*/t*.bin"))) < files:  # writing
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, latest_s))
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=60)
    assert "done" not in out, "the child finished before the kill: make its work longer"
    (left,) = _offload_dirs(parent)
    assert (left / OWNER_FILE).is_file()  # kill -9: nothing could clean up
    return left


def test_kill_9_during_a_generate_with_disk_resident_kv(wrangle_model_dir, tmp_path):
    seed = _seed()
    # killed once the KV cache is being written: the weights are 10 files, and on a loaded
    # box writing them can take longer than the random delay
    left = _kill_child("generate", wrangle_model_dir, tmp_path, random.Random(seed), 2.0,
                       files=11)
    assert len(list(left.glob("t*.bin"))) > 10, seed  # weights and KV cache on disk
    with Engine.from_pretrained(wrangle_model_dir, policy=OFFLOADED, dtype=torch.float32,
                                offload_dir=tmp_path) as eng:
        assert not left.exists(), seed  # the next start removed it
        assert _offload_dirs(tmp_path) == [eng.offload_dir]
    assert not list(tmp_path.iterdir()), seed


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["construct", "generate", "pandas", "arrow"])
def test_kill_9_at_random_moments(wrangle_model_dir, tmp_path, mode):
    """Three kills per mode; then one LLM call in the same offload parent: the stale
    directories are gone and the call's results are right."""
    seed = _seed()
    rng, texts, parent = random.Random(seed), pa.array(column(6)), tmp_path / "offload"
    options = {"policy": OFFLOADED, "dtype": torch.float32, "progress": False}
    with fw.LLM(wrangle_model_dir, offload_dir=tmp_path / "ref", **options) as alone:
        expected = alone.classify(texts, ["yes", "no"])
    for kill in range(3):
        left = _kill_child(mode, wrangle_model_dir, parent, rng, 1.0)
        with fw.LLM(wrangle_model_dir, offload_dir=parent, **options) as llm:
            assert llm.classify(texts, ["yes", "no"]).equals(expected), (seed, kill)
            assert not left.exists(), (seed, kill)
        assert not list(parent.iterdir()), (seed, kill)


def _argv(model_dir: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(source), "--column", "text", "--classify", "yes,no", "--model",
            str(model_dir), "--output", str(out), "--block-rows", "50", "--no-progress",
            *extra]


@pytest.mark.slow
def test_kill_9_of_run_leaves_no_offload_directory_and_resumes(wrangle_model_dir, tmp_path,
                                                               monkeypatch):
    """`flexgen-wrangle run` (offload directory in its TMPDIR) killed at random moments, three
    times; each next run removes the dead one's directory; the output equals an uninterrupted
    run's."""
    seed = _seed()
    rng = random.Random(seed)
    source, tmp = tmp_path / "in.parquet", tmp_path / "tmp"
    tmp.mkdir()
    pq.write_table(pa.table({"id": list(range(1500)), "text": column(1500)}), source)
    assert cli.main(_argv(wrangle_model_dir, source, tmp_path / "ref.parquet")) == 0
    out = tmp_path / "out.parquet"
    env = {**os.environ, "TMPDIR": str(tmp)}
    for kill in range(3):
        argv = _argv(wrangle_model_dir, source, out, *(["--resume"] if kill else []))
        child = subprocess.Popen([sys.executable, "-m", "flexgen_wrangle.cli", *argv], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not _offload_dirs(tmp, child.pid) and child.poll() is None:  # engine built
            assert time.monotonic() < deadline, (seed, kill)
            time.sleep(0.02)
        if child.poll() is not None:  # the resumed run had little left and finished
            assert child.returncode == 0, (seed, kill, child.communicate()[1])
            break
        assert len(_offload_dirs(tmp)) == 1, (seed, kill)  # the dead one's removed at start
        time.sleep(rng.uniform(0.0, 1.0))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        # left behind until the next start (none if the kill fell between two engines: a
        # resumed run replaces the first with one under the pinned policy)
        assert len(_offload_dirs(tmp)) <= 1, (seed, kill)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0, seed
    assert not _offload_dirs(tmp), seed
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "ref.parquet")), seed
