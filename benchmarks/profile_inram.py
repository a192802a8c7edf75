"""Where the engine's in-RAM time goes (issue 17): prefill and decode apart, per layer kind,
and per kind of work (matmul, attention, copies, allocation, element-wise, the rest: Python
and dispatch), from one torch-profiler pass over a generate; and a paired A/B of the packed
oneDNN weights against plain `F.linear` (alternating runs in one process, medians).

    python -m benchmarks.profile_inram --model qwen2-0.5b --rows 32 --prompt-len 256 --gen-len 8 \
        [--plain]
    python -m benchmarks.profile_inram --model qwen2-0.5b --rows 128 --prompt-len 256 \
        --gen-len 32 --ab 3 --no-profile

The model is a preset of `benchmarks.checkpoints` (built on first use); the engine runs with
the auto policy, which at these sizes puts everything on the device tier (RAM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

from benchmarks.checkpoints import ensure_checkpoint

CATEGORIES = {  # op name -> kind of work; the rest is element-wise
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
               "mkldnn::_linear_pointwise"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_attention_math", "aten::_softmax"),
    "copies": ("aten::copy_", "aten::cat", "aten::index_select", "aten::index",
               "aten::index_put_", "aten::clone"),
    "allocation": ("aten::empty", "aten::empty_strided", "aten::zeros", "aten::zero_",
                   "aten::fill_", "aten::resize_"),
}
_CATEGORY_OF = {name: kind for kind, names in CATEGORIES.items() for name in names}
# ops that only call others (their self time is dispatch, counted in "python")
_WRAPPERS = {"aten::linear", "aten::matmul", "aten::scaled_dot_product_attention", "aten::to",
             "aten::_to_copy", "aten::contiguous", "aten::reshape", "aten::view"}


def category(op: str) -> str:
    return _CATEGORY_OF.get(op, "python" if op in _WRAPPERS else "element-wise")


@contextlib.contextmanager
def labelled_layers() -> Iterator[None]:
    """Wrap engine.model.math's embed / decoder / head in profiler ranges named
    '<kind>:<prefill|decode>' (decode: one new token per row; the head: the phase of the
    layers it follows)."""
    from engine.model import math

    originals = {name: getattr(math, name) for name in ("embed", "decoder", "head")}
    last = {"phase": "prefill"}  # the head takes the phase of the layers before it

    def wrap(name, fn):
        def labelled(cfg, w, x, *args, **kwargs):
            if name != "head":
                last["phase"] = "decode" if x.shape[1] == 1 else "prefill"
            phase = last["phase"]
            with torch.profiler.record_function(f"{name}:{phase}"):
                return fn(cfg, w, x, *args, **kwargs)
        return labelled

    try:
        for name, fn in originals.items():
            setattr(math, name, wrap(name, fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(math, name, fn)


def _range_of(event) -> str | None:
    parent = event.cpu_parent
    while parent is not None:
        if ":" in parent.name and parent.name.split(":")[0] in ("embed", "decoder", "head"):
            return parent.name
        parent = parent.cpu_parent
    return None


def breakdown(events) -> dict[str, dict[str, float]]:
    """Profiler events -> seconds per '<kind>:<phase>' range: its wall, and the self time of
    the ops inside it by category; 'python' is the wall not spent inside any op."""
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in events:
        if event.name in ("embed:prefill", "embed:decode", "decoder:prefill", "decoder:decode",
                          "head:prefill", "head:decode"):
            table[event.name]["wall"] += event.cpu_time_total / 1e6
            table[event.name]["calls"] += 1
            continue
        label = _range_of(event)
        if label is not None:
            table[label][category(event.name)] += event.self_cpu_time_total / 1e6
    for row in table.values():
        ops = sum(seconds for name, seconds in row.items() if name not in ("wall", "calls"))
        row["python"] += max(0.0, row["wall"] - ops)
    return {label: dict(row) for label, row in sorted(table.items())}


def format_breakdown(table: dict[str, dict[str, float]]) -> str:
    kinds = ["matmul", "attention", "copies", "allocation", "element-wise", "python"]
    lines = ["| range | calls | wall s | " + " | ".join(kinds) + " |",
             "|---|---|---|" + "---|" * len(kinds)]
    for label, row in table.items():
        shares = [f"{100 * row.get(kind, 0.0) / max(row['wall'], 1e-9):.1f}%" for kind in kinds]
        lines.append(f"| {label} | {int(row['calls'])} | {row['wall']:.2f} | "
                     + " | ".join(shares) + " |")
    return "\n".join(lines)


def _prompts(rows: int, length: int, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(17)
    return torch.randint(4, vocab, (rows, length), generator=generator).tolist()


def profile_generate(engine, prompts: list[list[int]], gen_len: int) -> dict:
    from engine import SamplingParams

    with labelled_layers(), torch.profiler.profile(activities=[
            torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        engine.generate(prompts, SamplingParams(gen_len, ignore_eos=True))
        wall = time.perf_counter() - start
    return {"wall_s": wall, "ranges": breakdown(prof.events())}


def packing_ab(model_dir, prompts: list[list[int]], gen_len: int, repeats: int,
               dtype: torch.dtype | None = None) -> dict:
    """Two engines in one process, one with weights packed for oneDNN and one without,
    generating in turn; tok/s of each run and the median ratio."""
    from engine import Engine, SamplingParams
    from engine.model import kernels

    supported = kernels.packing_supported
    engines = {arm: Engine.from_pretrained(model_dir, dtype=dtype) for arm in ("plain", "packed")}
    rates: dict[str, list[float]] = {arm: [] for arm in engines}
    try:
        for _ in range(repeats + 1):  # the first round warms up (and packs) untimed
            for arm, engine in engines.items():
                kernels.packing_supported = supported if arm == "packed" else (
                    lambda device, dtype: False)
                start = time.perf_counter()
                engine.generate(prompts, SamplingParams(gen_len, ignore_eos=True))
                rates[arm].append(len(prompts) * gen_len / (time.perf_counter() - start))
    finally:
        kernels.packing_supported = supported
        for engine in engines.values():
            engine.close()
    timed = {arm: values[1:] for arm, values in rates.items()}
    return {"tok_per_s": timed, "ratio_packed_over_plain": statistics.median(
        p / q for p, q in zip(timed["packed"], timed["plain"], strict=True))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2-0.5b")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--gen-len", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                        help="the engine's compute dtype (default: the engine's for this CPU)")
    parser.add_argument("--ab", type=int, default=0, help="repeats of the packing A/B (0: off)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--plain", action="store_true",
                        help="profile with plain F.linear weights (packing off)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = ensure_checkpoint(args.model)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompts = _prompts(args.rows, args.prompt_len, vocab)
    result: dict = {"model": args.model, "dtype": args.dtype or "engine default",
                    "rows": args.rows, "prompt_len": args.prompt_len,
                    "gen_len": args.gen_len, "threads": torch.get_num_threads()}
    if not args.no_profile:
        from engine import Engine, SamplingParams
        from engine.model import kernels

        if args.plain:  # this process only
            kernels.packing_supported = lambda device, dtype: False
        with Engine.from_pretrained(model_dir, dtype=dtype) as engine:
            engine.generate(prompts[:2], SamplingParams(2, ignore_eos=True))  # packs, warms up
            result["profile"] = profile_generate(engine, prompts, args.gen_len)
        result["plain"] = args.plain
        print(format_breakdown(result["profile"]["ranges"]))
    if args.ab:
        result["packing_ab"] = packing_ab(model_dir, prompts, args.gen_len, args.ab, dtype)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
