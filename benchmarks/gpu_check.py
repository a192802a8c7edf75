"""`make gpu-check`: the GPU tests and one short benchmark, meant for one H100/H200 in under
6 minutes, results to one JSON file. Without a GPU it writes and prints a "no GPU" line and
exits 0.

    python -m benchmarks.gpu_check [--out benchmarks/results/gpu-check.json]

Steps (each under its own time limit, so a hang cannot eat the machine):
1. pytest: tests/engine/test_gpu.py (fp32 on CUDA equals HF under GPU-resident and streamed
   policies, bf16 within its device budget) and the HF-equivalence and family tests, which
   run on CUDA when it is there (the engine's default device);
2. `benchmarks.run --quick --workload 1 --device cuda --systems hf,ours:auto --repeats 1`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import BENCH_DIR, RESULTS_DIR

TESTS = ["tests/engine/test_gpu.py", "tests/engine/test_hf_equivalence.py",
         "tests/engine/test_families.py"]
STEPS = (  # name, command (after the interpreter), seconds allowed
    ("tests", ["-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], 210),
    ("benchmark", ["-m", "benchmarks.run", "--quick", "--workload", "1", "--device", "cuda",
                   "--systems", "hf,ours:auto", "--repeats", "1"], 120),
)


def gpu_name() -> str | None:
    """The CUDA device's name, or None when torch sees no GPU (or is a CPU-only build)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run_step(name: str, args: list[str], limit_s: float) -> dict:
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              cwd=BENCH_DIR.parent, timeout=limit_s, check=False)
        rc, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        rc, out = -1, f"timed out after {limit_s:.0f} s\n{err.stdout or ''}"
    tail = out if isinstance(out, str) else out.decode(errors="replace")
    return {"step": name, "command": " ".join(args), "rc": rc, "ok": rc == 0,
            "seconds": round(time.monotonic() - start, 1), "tail": tail[-4000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu-check.json")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    device = gpu_name()
    if device is None:
        record["result"] = "no GPU: torch.cuda.is_available() is False; nothing run"
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"gpu-check: {record['result']} ({args.out})")
        return 0
    record["device"] = device
    record["steps"] = [run_step(name, cmd, limit) for name, cmd, limit in STEPS]
    record["ok"] = all(step["ok"] for step in record["steps"])
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    for step in record["steps"]:
        print(f"gpu-check: {step['step']}: {'ok' if step['ok'] else 'FAILED'} "
              f"({step['seconds']} s)")
    print(f"gpu-check on {device}: {'ok' if record['ok'] else 'FAILED'} ({args.out})")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
