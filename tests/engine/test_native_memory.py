"""A long run of ever-new shapes does not grow the process: oneDNN's and ideep's per-shape
caches are bounded and malloc's freed memory is returned after each block
(engine/native_memory.py). Without that, this run grew ~6.6 MB per call on the demo model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.native_memory import CACHE_ENTRIES

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("native_memory_child.py")
DEMO_MODEL = ROOT / "examples" / "demo_model"
WARM_UP_CALLS = 40  # the caches fill with the first CACHE_ENTRIES shapes (~20 calls)
GROWTH_LIMIT_MB = 40.0  # over the 30 calls after the warm-up: 12 MB; unbounded caches: ~200 MB


def _rss_per_call(env: dict[str, str]) -> list[float]:
    out = subprocess.run([sys.executable, str(CHILD), str(DEMO_MODEL)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_new_shapes_do_not_grow_the_process():
    env = {name: value for name, value in os.environ.items()
           if name not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    rss = _rss_per_call(env)
    growth = rss[-1] - rss[WARM_UP_CALLS - 1]
    assert growth < GROWTH_LIMIT_MB, (
        f"RSS grew {growth:.0f} MB over {len(rss) - WARM_UP_CALLS} calls after warm-up "
        f"(caches at {CACHE_ENTRIES} entries): {[round(mb) for mb in rss[::10]]}")


def test_importing_the_engine_turns_on_huge_pages_unless_told_otherwise():
    code = "import os, engine; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    env = {name: value for name, value in os.environ.items() if name != "THP_MEM_ALLOC_ENABLE"}
    default = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120, check=True)
    chosen = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            env=env | {"THP_MEM_ALLOC_ENABLE": "0"},
                            capture_output=True, text=True, timeout=120, check=True)
    assert (default.stdout.strip(), chosen.stdout.strip()) == ("1", "0")
