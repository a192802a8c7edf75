"""Helpers that stage processes import (kept free of pytest): a slow logits processor, and a
script that builds a staged engine and then waits to be killed."""

from __future__ import annotations

import time

import torch

SLOW_STEP_S = 0.05


def slow_processor(row_id: int, outputs: list[int], logits: torch.Tensor) -> torch.Tensor:
    """Leaves the logits as they are, slowly: keeps a generate running long enough to be
    interrupted."""
    time.sleep(SLOW_STEP_S)
    return logits


PARENT_SCRIPT = """
import json, sys
from engine import Engine, Placement, Policy, SamplingParams
from tests.engine.distributed.helpers import slow_processor
policy = Policy(1, 2, Placement(0, 0, 100), Placement(0, 100, 0), Placement(100, 0, 0))
eng = Engine.from_pretrained(sys.argv[1], policy=policy, offload_dir=sys.argv[2], stages=2)
print(json.dumps({"pids": eng.pids, "dirs": [str(path) for path in eng.offload_dirs]}), flush=True)
# busy stages: 120 tokens x 2 rows x 50 ms, far longer than the test waits after the kill
eng.generate([[5, 6], [7, 8]], SamplingParams(max_new_tokens=120, ignore_eos=True,
                                              logits_processor=slow_processor))
"""
