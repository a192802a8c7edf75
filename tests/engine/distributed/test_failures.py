"""A stage that dies fails the call with an error naming it, within bounded time; every stage
process ends and no offload file is left behind, whether a stage, or the caller, dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from engine import Engine, Placement, Policy, SamplingParams, StageError
from tests.engine.distributed.helpers import PARENT_SCRIPT, slow_processor

POLICY = Policy(1, 2, Placement(0, 0, 100), Placement(0, 50, 50), Placement(100, 0, 0))
DEATH_BOUND_S = 15.0  # from the kill to the caller's error, on a loaded 2-core box
REPO = Path(__file__).resolve().parents[3]


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: nothing runs any more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _wait_gone(pids: list[int], bound_s: float) -> bool:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def test_killed_stage_fails_the_call_naming_it(model_dirs, tmp_path):
    offload = tmp_path / "offload"
    eng = Engine.from_pretrained(model_dirs("llama"), policy=POLICY, dtype=torch.float32,
                                 offload_dir=offload, stages=2)
    pids = eng.pids
    params = SamplingParams(max_new_tokens=60, logits_processor=slow_processor,
                            ignore_eos=True)
    failure: list[BaseException] = []

    def call() -> None:
        try:
            eng.generate([[5, 6, 7], [8, 9]], params)
        except BaseException as err:  # handed to the test thread
            failure.append(err)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(1.0)  # the generate is under way (60 tokens x 2 rows x 50 ms)
    os.kill(pids[0], signal.SIGKILL)
    killed = time.monotonic()
    worker.join(DEATH_BOUND_S)
    assert not worker.is_alive(), "the call hung after a stage died"
    assert time.monotonic() - killed < DEATH_BOUND_S
    (err,) = failure
    assert isinstance(err, StageError)
    assert "stage 0 of 2" in str(err) and "signal 9" in str(err)
    assert _wait_gone(pids, 5.0)
    assert eng.closed
    assert eng.offload_dir.parent == offload and list(offload.iterdir()) == []
    with pytest.raises(RuntimeError, match="closed"):
        eng.generate([[5]])


@pytest.mark.slow  # a spawn costs seconds: the default run keeps the killed-stage test only
def test_stage_failing_to_load_names_it_and_leaves_nothing(model_dirs, tmp_path):
    """Budgets are per stage: stage 1's device budget cannot hold its working set."""
    memory = [{"device": "64MiB"}, {"device": "1KiB"}]
    with pytest.raises(StageError, match=r"stage 1 of 2 .*MemoryBudgetError"):
        Engine.from_pretrained(model_dirs("opt"), policy=POLICY, dtype=torch.float32,
                               memory=memory, offload_dir=tmp_path, stages=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_stages_end_when_the_caller_dies(model_dirs, tmp_path):
    offload = tmp_path / "offload"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, str(model_dirs("llama")),
                               str(offload)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        started = json.loads(parent.stdout.readline())
        time.sleep(1.0)  # the stages are busy generating
    finally:
        parent.kill()
        parent.wait()
    # busy stages see no closed pipe: their watch of the caller ends them
    assert _wait_gone(started["pids"], 5.0), "stage processes outlived their caller"
    assert not any(Path(path).exists() for path in started["dirs"])
    assert list(offload.iterdir()) == []  # the stages' directory too


def test_bad_stage_arguments_fail_before_any_process(model_dirs):
    model_dir = model_dirs("opt")  # 3 decoder layers
    with pytest.raises(ValueError, match="stages must be between 1 and the model's 3"):
        Engine.from_pretrained(model_dir, stages=4)
    with pytest.raises(ValueError, match="one block shape"):
        Engine.from_pretrained(model_dir, policy=[POLICY, Policy(2, 2)], stages=2)
    with pytest.raises(ValueError, match="2 entries for 3 stages"):
        Engine.from_pretrained(model_dir, memory=[{}, {}], stages=3)


@pytest.mark.slow
def test_a_hung_stage_times_out_naming_both_stages(model_dirs, tmp_path):
    """A stage that stops answering (SIGSTOP) is not dead: its peer's wait times out."""
    from engine.distributed import StagedEngine

    eng = StagedEngine.spawn(model_dirs("llama"), 2, policy=POLICY, dtype=torch.float32,
                             offload_dir=tmp_path, timeout_s=3.0)
    pids = eng.pids
    params = SamplingParams(max_new_tokens=60, logits_processor=slow_processor,
                            ignore_eos=True)
    os.kill(pids[0], signal.SIGSTOP)
    begin = time.monotonic()
    with pytest.raises(StageError, match=r"stage 1 of 2.*from stage 0 failed or timed out"):
        eng.generate([[5, 6, 7], [8, 9]], params)
    assert time.monotonic() - begin < 3.0 + DEATH_BOUND_S
    assert _wait_gone(pids, 5.0)
    assert list(tmp_path.iterdir()) == []
