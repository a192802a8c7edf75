"""Offload directories left by dead processes are removed by the next engine, and only those."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from engine import Engine, Placement, Policy
from engine.storage.offload_dirs import OWNER_FILE, _start_time, make_offload_dir, remove_stale


def _dir(root: Path, name: str, owner: dict | None) -> Path:
    path = root / f"flexgen-{name}"
    path.mkdir()
    (path / "t0.bin").write_bytes(b"x" * 10)
    if owner is not None:
        (path / OWNER_FILE).write_text(json.dumps(owner))
    return path


def test_only_dead_owners_directories_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = {"pid": os.getpid(), "start": _start_time(os.getpid())}
    stale = _dir(tmp_path, "dead", {"pid": dead.pid, "start": "1"})
    reused = _dir(tmp_path, "reused", {"pid": os.getpid(), "start": "not-my-start"})
    live = _dir(tmp_path, "live", me)
    foreign = _dir(tmp_path, "foreign", None)  # no owner record: never ours to remove
    other = tmp_path / "other-dir"
    other.mkdir()
    assert sorted(remove_stale(tmp_path)) == sorted([stale, reused])
    assert live.exists() and foreign.exists() and other.exists()
    assert not stale.exists() and not reused.exists()
    made = make_offload_dir(tmp_path)
    assert json.loads((made / OWNER_FILE).read_text()) == me


CHILD = """
import sys, time, torch
from engine import Engine, Placement, Policy
eng = Engine.from_pretrained(sys.argv[1], policy=Policy(weights=Placement.on("disk")),
                             dtype=torch.float32, offload_dir=sys.argv[2])
print(eng.offload_dir, flush=True)
time.sleep(60)
"""


def test_a_killed_engines_directory_is_removed_by_the_next(model_dirs, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(model_dirs("llama")), str(tmp_path)],
                             stdout=subprocess.PIPE, text=True, env=env)
    left = Path(child.stdout.readline().strip())
    assert any(left.iterdir())  # weights written to the disk tier
    child.send_signal(signal.SIGKILL)
    child.wait()
    time.sleep(0.1)
    assert left.exists()  # kill -9: nothing could clean up
    with Engine.from_pretrained(model_dirs("llama"), policy=Policy(weights=Placement.on("disk")),
                                dtype=torch.float32, offload_dir=tmp_path) as eng:
        assert not left.exists()
        assert eng.offload_dir.exists()
    assert not any(tmp_path.iterdir())
