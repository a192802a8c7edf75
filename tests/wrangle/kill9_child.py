"""A process to be killed with SIGKILL: `python -m tests.wrangle.kill9_child MODE MODEL OFFLOAD`.

MODE: `construct` (weights written to the disk tier, each write slowed to 200 ms so the kill
lands among them), `generate` (a long generate with the KV cache on disk), `pandas` (the
accessor over a long column), `arrow` (an Arrow stream of many blocks). It prints `started`
when the interesting part begins and `done` if it ever ends (the parent kills it before).
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa
import torch

from engine import Engine, Placement, Policy
from engine.sampling import SamplingParams

OFFLOADED = Policy(4, 2, Placement(0, 30, 70), Placement(0, 30, 70), Placement(0, 50, 50))
WORDS = ["good", "bad", "fine", "awful", "ok", "great", "poor", "nice"]


def column(rows: int) -> list[str]:
    return [f"{WORDS[row % 8]} {WORDS[(row * 5) % 8]} {row}" for row in range(rows)]


def _construct(model: str, offload: str) -> None:
    from engine.storage import disk

    real_write = disk.write_file

    def slow_write(*args, **kwargs):
        time.sleep(0.2)
        return real_write(*args, **kwargs)

    disk.write_file = slow_write
    print("started", flush=True)
    Engine.from_pretrained(model, policy=OFFLOADED, dtype=torch.float32, offload_dir=offload)


def _generate(model: str, offload: str) -> None:
    with Engine.from_pretrained(model, policy=OFFLOADED, dtype=torch.float32,
                                offload_dir=offload) as eng:
        print("started", flush=True)
        prompts = [[3 + row % 50, 4, 5 + row % 7] for row in range(64)]
        eng.generate(prompts, SamplingParams(max_new_tokens=200, ignore_eos=True))


def _llm(model: str, offload: str):
    import flexgen_wrangle as fw

    return fw.LLM(model, policy=OFFLOADED, dtype=torch.float32, offload_dir=offload,
                  progress=False)


def _pandas(model: str, offload: str) -> None:
    import pandas as pd

    with _llm(model, offload) as llm:
        frame = pd.DataFrame({"text": column(20000)})
        llm.classify(pa.array(column(2)), ["yes", "no"])  # the engine is built
        print("started", flush=True)
        frame.flexgen.classify("text", ["yes", "no"], llm=llm)


def _arrow(model: str, offload: str) -> None:
    from udfs.arrow_stream import classify_reader

    with _llm(model, offload) as llm:
        table = pa.table({"text": column(20000)})
        llm.classify(pa.array(column(2)), ["yes", "no"])  # the engine is built
        reader = classify_reader(table.to_reader(max_chunksize=500), "text", ["yes", "no"], llm,
                                 block_rows=500)
        for index, _ in enumerate(reader):
            if index == 0:
                print("started", flush=True)


if __name__ == "__main__":
    mode, model_dir, offload_dir = sys.argv[1:4]
    {"construct": _construct, "generate": _generate, "pandas": _pandas,
     "arrow": _arrow}[mode](model_dir, offload_dir)
    print("done", flush=True)
