"""The engine's benchmark runner: `auto` is the planner's policy for the run's own workload (its
row count, the histogram of its prompt lengths, new tokens) under the memory it was given, and
a named hand policy runs as written."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from benchmarks.runners.common import make_prompts
from benchmarks.runners.ours import HAND_POLICIES, main, to_jsonable
from engine import Workload, plan
from tests.models import build_model

MEMORY = {"device": 128 * 2**20, "host": 0, "disk": 2**30}  # as the harness gives on a CPU
ROWS, PREFIX, PROMPT_LEN, GEN_LEN = 20, 6, 14, 3


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("opt-ours"), "opt")


def run_policy(opt_dir: Path, offload: Path, policy: str, capsys: pytest.CaptureFixture) -> dict:
    main(["--model", str(opt_dir), "--rows", str(ROWS), "--prompts", "wrangling",
          "--prefix-len", str(PREFIX), "--prompt-len", str(PROMPT_LEN), "--gen-len", str(GEN_LEN),
          "--policy", policy, "--memory", json.dumps(MEMORY), "--offload-dir", str(offload),
          "--threads", "1"])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_auto_is_planned_for_the_runs_own_workload(
        opt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = run_policy(opt_dir, tmp_path, "auto", capsys)
    assert result["tokens_ok"] and result["gen_tokens"] == ROWS * GEN_LEN

    vocab = json.loads((opt_dir / "config.json").read_text())["vocab_size"]
    prompts = make_prompts("wrangling", ROWS, PROMPT_LEN, PREFIX, vocab, seed=0)  # the default
    lengths = Counter(len(prompt) for prompt in prompts)
    assert len(lengths) > 1  # long-tailed rows: the plan sees a histogram, not one length
    workload = Workload(rows=ROWS, prompt_len=dict(lengths), gen_len=GEN_LEN)
    expected = plan(opt_dir, workload, memory=MEMORY, device="cpu", dtype=torch.bfloat16,
                    offload_dir=tmp_path).policy
    assert result["chosen_policy"] == to_jsonable(expected)


def test_hand_policy_runs_as_named(
        opt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = run_policy(opt_dir, tmp_path, "w25-disk75-16x2", capsys)
    spec = HAND_POLICIES["w25-disk75-16x2"]
    chosen = result["chosen_policy"]
    assert (chosen["gpu_batch_size"], chosen["num_gpu_batches"]) == (16, 2)
    assert chosen["weights"]["disk"] == spec["weights"]["disk"]
    assert result["engine_stats"]["bytes_moved"].get("disk->device", 0) > 0
