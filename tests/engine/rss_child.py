"""Child process of test_rss_bound: runs one engine under the budgets given as JSON on argv and
prints one JSON line: its peak RSS, its RSS after imports, and the engine's ledger peaks."""

from __future__ import annotations

import json
import sys


def peak_rss() -> int:
    """VmHWM: this process image's peak RSS (ru_maxrss would include the parent's, since a
    forked child inherits it across exec)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def main() -> None:
    model_dir, spec = sys.argv[1], json.loads(sys.argv[2])
    import torch

    from engine import Engine, Placement, Policy, SamplingParams

    torch.set_num_threads(1)
    torch.ones(64, 64) @ torch.ones(64, 64)  # kernels loaded before the baseline is taken
    baseline = peak_rss()
    policy = Policy(spec["gpu_batch_size"], spec["num_gpu_batches"],
                    weights=Placement(**spec["weights"]), cache=Placement(**spec["cache"]),
                    activations=Placement.on("device"))
    prompts = [[(row * 7 + col) % 500 + 3 for col in range(spec["prompt_len"])]
               for row in range(spec["rows"])]
    with Engine.from_pretrained(model_dir, policy=policy, dtype=getattr(torch, spec["dtype"]),
                                memory=spec["memory"]) as eng:
        eng.generate(prompts, SamplingParams(max_new_tokens=spec["gen_len"], ignore_eos=True))
        peaks = dict(eng.stats.peak_bytes)
    peak = peak_rss()
    print(json.dumps({"peak_rss": peak, "baseline_rss": baseline, "ledger_peaks": peaks}))


if __name__ == "__main__":
    main()
