"""Under `torchrun` the same call joins the launcher's group: every rank gets the outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import Engine, Placement, Policy, SamplingParams

POLICY = Policy(1, 2, Placement(0, 50, 50), Placement(0, 100, 0), Placement(100, 0, 0))
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
REPO = Path(__file__).resolve().parents[3]

SCRIPT = """
import json, os, sys, torch
from engine import Engine, Placement, Policy, SamplingParams
policy = Policy(1, 2, Placement(0, 50, 50), Placement(0, 100, 0), Placement(100, 0, 0))
with Engine.from_pretrained(sys.argv[1], policy=policy, dtype=torch.float32, stages=2) as eng:
    outs = eng.generate(json.loads(sys.argv[2]), SamplingParams(max_new_tokens=5))
    stats = eng.stats
out = {"outs": outs, "stages": len(stats.stages)}
with open(os.path.join(sys.argv[3], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(out, f)
"""


@pytest.mark.slow
def test_torchrun_ranks_join_and_all_get_the_outputs(model_dirs, tmp_path):
    model_dir = model_dirs("llama")
    with Engine.from_pretrained(model_dir, policy=POLICY, dtype=torch.float32) as single:
        expected = single.generate(PROMPTS, SamplingParams(max_new_tokens=5))
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(script),
                    str(model_dir), json.dumps(PROMPTS), str(tmp_path)],
                   check=True, env=env, timeout=120)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result == {"outs": expected, "stages": 2}
