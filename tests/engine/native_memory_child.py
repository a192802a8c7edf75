"""Child of test_native_memory.py: CALLS engine calls on the demo model (bf16), each with a
matmul shape of its own (rows x prompt length), printing the RSS after each as JSON."""

from __future__ import annotations

import json
import sys

import psutil

from engine import Engine, SamplingParams

CALLS = 70


def prompts_of(call: int) -> list[list[int]]:
    rows, length = 8 + call % 7, 12 + call
    return [[5 + (row * 7 + pos) % 300 for pos in range(length - row % 3)] for row in range(rows)]


def main(model_dir: str) -> None:
    process, rss_mb = psutil.Process(), []
    with Engine.from_pretrained(model_dir) as engine:  # bf16, all in RAM: oneDNN matmuls
        for call in range(CALLS):
            engine.generate(prompts_of(call), SamplingParams(max_new_tokens=2, ignore_eos=True))
            rss_mb.append(process.memory_info().rss / 2**20)
    print(json.dumps(rss_mb))


if __name__ == "__main__":
    main(sys.argv[1])
