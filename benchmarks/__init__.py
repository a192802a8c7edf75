"""Side-by-side benchmarks: our engine against HF transformers and HF Accelerate offload.

Every system runs in its own process on the same seeded prompts over the same seeded
random-weight checkpoint (`benchmarks.checkpoints`); `benchmarks.run` orchestrates, and
`benchmarks.floor` says how far each run is from what the machine allows.
"""

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"  # git-ignored: checkpoints, hardware profile, offload dirs
RESULTS_DIR = BENCH_DIR / "results"  # <timestamp>.json summaries; raw/ (git-ignored) run logs
