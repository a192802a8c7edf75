"""The auto plan against a grid of hand policies (issue 3's benchmark).

For three workloads on a small seeded random model (everything fits; a tight device budget with
long-tailed prompts; an offloading budget with a shared prefix), run the engine under the LP
planner's policy and under each of 36 hand policies (6 block shapes x 6 placements), keep the
best of `--repeats` timed runs of each (auto is re-measured between groups of hand policies and
keeps its best), and report measured tokens/s, the planner's prediction,
and whether auto reaches 90% of the best hand policy. Hand policies that do not fit a budget are
listed as such. Runs share one process (they are our own engine under different policies), each
after an untimed warm-up.

    python -m benchmarks.policy_grid --quick            # small model, 48 rows: a few minutes
    python -m benchmarks.policy_grid --json out.json    # a bigger model and table
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, OPTConfig

from benchmarks import CACHE_DIR
from engine import Engine, MemoryBudgetError, Placement, Policy, SamplingParams, Workload, plan
from engine.config import ModelConfig
from engine.model import layer_specs
from engine.policy import load_profile, predict

TARGET = 0.9  # auto must reach this share of the best hand policy's tokens/s
MODELS = {  # name -> OPT shape; seeded random weights, built once under benchmarks/.cache
    "grid-small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
                   "ffn_dim": 1024, "vocab_size": 2048},
    "grid-medium": {"hidden_size": 768, "num_hidden_layers": 8, "num_attention_heads": 12,
                    "ffn_dim": 3072, "vocab_size": 8192},
}
D, H, K = Placement.on("device"), Placement.on("host"), Placement.on("disk")
PLACEMENTS = {  # name -> (weights, cache, activations): from all-device to mostly-on-disk
    "all-device": (D, D, D),
    "w50dev-50host": (Placement(50, 50, 0), D, D),
    "w-host c-host": (H, H, D),
    "w-host c-host a-host": (H, H, H),
    "w-disk c-host": (K, H, D),
    "w-disk c-disk a-host in-order": (K, K, H),  # overlap off: one layer's weights at a time
}


@dataclass(frozen=True)
class Case:
    name: str
    workload: Workload
    budget_shares: dict[str, float]  # tier -> budget as a share of the weights' bytes


@dataclass
class Row:
    policy: str
    block: str
    measured: float | None  # tokens/s, best of the repeats; None when it did not fit
    predicted: float | None = None
    note: str = ""


@dataclass
class CaseResult:
    case: str
    memory: dict[str, int]
    auto: Row
    hand: list[Row] = field(default_factory=list)

    @property
    def best_hand(self) -> Row | None:
        ran = [row for row in self.hand if row.measured]
        return max(ran, key=lambda row: row.measured) if ran else None

    @property
    def ratio(self) -> float | None:
        best = self.best_hand
        return self.auto.measured / best.measured if best and self.auto.measured else None


def cases(rows: int) -> list[Case]:
    return [
        Case("fits", Workload(rows, 48, 8), {}),
        Case("device-tight", Workload(rows, {16: 30, 48: 14, 96: 4}, 8), {"device": 0.75}),
        Case("offload+prefix", Workload(rows, 32, 8, shared_prefix=16),
             {"device": 0.5, "host": 0.5}),
    ]


def hand_grid(rows: int) -> list[tuple[str, Policy]]:
    shapes = [(2, 1), (4, 1), (4, 4), (8, 2), (16, 1), (rows, 1)]
    return [(f"{name} {size}x{count}",
             Policy(size, count, *placement, overlap="in-order" not in name))
            for size, count in shapes for name, placement in PLACEMENTS.items()]


def build_model(name: str) -> Path:
    out = CACHE_DIR / "models" / name
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        config = OPTConfig(**MODELS[name], max_position_embeddings=512, eos_token_id=2,
                           pad_token_id=1, bos_token_id=0)
        AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def budgets(model_dir: Path, dtype: torch.dtype, shares: dict[str, float]) -> dict[str, int]:
    layers = layer_specs(ModelConfig.from_pretrained(model_dir))
    weights = sum(int(torch.Size(spec.shape).numel()) for layer in layers for spec in layer.weights)
    return {tier: int(share * weights * dtype.itemsize) for tier, share in shares.items()}


def prompts_for(workload: Workload, vocab: int) -> tuple[list[list[int]], list[int] | None]:
    rnd = random.Random(0)
    lengths = [int(length) for length in workload.lengths()]
    rnd.shuffle(lengths)
    prompts = [[rnd.randrange(4, vocab) for _ in range(length)] for length in lengths]
    prefix = [rnd.randrange(4, vocab) for _ in range(workload.shared_prefix)]
    return prompts, prefix or None


def run_policy(model_dir: Path, policy: Policy, case: Case, memory: dict[str, int],
               dtype: torch.dtype, repeats: int) -> tuple[float | None, str]:
    """Best tokens/s over `repeats` timed runs, or None and the reason it did not run."""
    vocab = ModelConfig.from_pretrained(model_dir).vocab_size
    prompts, prefix = prompts_for(case.workload, vocab)
    params = SamplingParams(max_new_tokens=case.workload.gen_len, ignore_eos=True)
    try:
        with Engine.from_pretrained(model_dir, policy=policy, dtype=dtype, memory=memory) as eng:
            eng.generate(prompts[:2], params, prefix=prefix)  # warm-up, untimed
            best = float("inf")
            for _ in range(repeats):
                begin = time.perf_counter()
                eng.generate(prompts, params, prefix=prefix)
                best = min(best, time.perf_counter() - begin)
    except MemoryBudgetError as err:
        return None, f"does not fit: {str(err)[:60]}"
    return len(prompts) * case.workload.gen_len / best, ""


def bench_case(model_dir: Path, case: Case, dtype: torch.dtype, repeats: int) -> CaseResult:
    """Auto is re-measured after every few hand policies and keeps its best run, so that a
    busy spell on a shared machine does not land on it alone."""
    memory = budgets(model_dir, dtype, case.budget_shares)
    profile = load_profile()
    cfg = ModelConfig.from_pretrained(model_dir)
    auto = plan(model_dir, case.workload, memory, dtype=dtype, profile=profile)
    auto_runs = [run_policy(model_dir, auto.policy, case, memory, dtype, repeats)]
    hand = []
    for index, (name, policy) in enumerate(hand_grid(case.workload.rows)):
        measured, note = run_policy(model_dir, policy, case, memory, dtype, repeats)
        predicted = predict(cfg, layer_specs(cfg), policy, case.workload, profile, dtype)
        hand.append(Row(name, _block(policy), measured, predicted.tokens_per_s, note))
        if index % len(PLACEMENTS) == len(PLACEMENTS) - 1:
            auto_runs.append(run_policy(model_dir, auto.policy, case, memory, dtype, repeats))
    measured = max((tokens for tokens, _ in auto_runs if tokens), default=None)
    note = auto_runs[0][1] or auto.why
    return CaseResult(case.name, memory, Row("auto", _block(auto.policy), measured,
                                             auto.tokens_per_s, note), hand)


def _block(policy: Policy) -> str:
    return f"{policy.gpu_batch_size}x{policy.num_gpu_batches}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def report(result: CaseResult) -> str:
    lines = [f"### {result.case} (budgets: {result.memory or 'free memory'})", "",
             "| policy | block | measured tok/s | predicted tok/s | note |",
             "|---|---|---:|---:|---|"]
    rows = [result.auto, *sorted(result.hand, key=lambda row: -(row.measured or 0))]
    lines += [f"| {row.policy} | {row.block} | {_fmt(row.measured)} | {_fmt(row.predicted)} | "
              f"{row.note} |" for row in rows]
    best, ratio = result.best_hand, result.ratio
    verdict = "n/a" if ratio is None else f"{ratio:.0%} ({'ok' if ratio >= TARGET else 'BELOW'})"
    lines += ["", f"auto / best hand ({best.policy if best else '-'}): {verdict}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, 48 rows")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: steady timings on a shared box)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model_dir = build_model("grid-small" if args.quick else "grid-medium")
    results = []
    for case in cases(48 if args.quick else 128):
        results.append(bench_case(model_dir, case, dtype, args.repeats))
        print(report(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"ratio": r.ratio} for r in results],
                                        indent=1))
    ratios = [result.ratio for result in results if result.ratio is not None]
    return 0 if ratios and min(ratios) >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
