"""The `flexgen_wrangle` column pipeline (`fw.LLM.generate` over a text column): workload 3.

    python -m benchmarks.runners.pipeline --model DIR --rows 2000 --prompts wrangling \
        --prefix-len 400 --prompt-len 464 --gen-len 8 --mode pipeline|plain [--memory JSON] \
        [--dtype bfloat16|float32]

The workload's ids become text through a word-per-id tokenizer written into the checkpoint
(`benchmarks.word_tokenizer`), so the pipeline tokenizes back to exactly those ids. `pipeline`
is the wrangling path (dedup, length-sorted blocks, shared prefix computed once); `plain` is
FlexGen's own mode on the same engine: full prompts in table order, nothing shared. The timed
phase is the whole column call, planning and engine build included: what a user waits for.
In float32 the two modes' ids agree exactly (bf16 rounds differently by shape).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.runners.common import Meter, base_parser, build_result, emit, prompts_for, setup_torch
from benchmarks.runners.ours import to_jsonable
from benchmarks.word_tokenizer import ensure_word_tokenizer, ids_to_text

MODES = {
    "pipeline": {},
    "plain": {"dedup": False, "bucket": False, "share_prefix": False},
}


def run(args) -> dict:
    import torch

    from flexgen_wrangle import LLM

    setup_torch(args)
    ensure_word_tokenizer(args.model)
    prompts = prompts_for(args)
    prefix = prompts[0][: args.prefix_len]
    rows = [ids_to_text(ids[args.prefix_len :]) for ids in prompts]
    prefix_text = ids_to_text(prefix) + " " if prefix else ""
    memory = json.loads(args.memory) if args.memory else None
    offload_dir = Path(tempfile.mkdtemp(prefix="pipeline-offload-", dir=args.offload_dir))
    meter = Meter()
    try:
        with meter.phase("load"):
            llm = LLM(args.model, memory=memory, policy=args.policy, progress=False,
                      dtype=getattr(torch, args.dtype), device=args.device, offload_dir=offload_dir)
        with llm, meter.phase("generate"):
            texts = llm.generate(rows, max_new_tokens=args.gen_len, prefix=prefix_text,
                                 **MODES[args.mode]).to_pylist()
        stats = llm.last_stats
        plan = llm.plan_text
    finally:
        shutil.rmtree(offload_dir, ignore_errors=True)
    outputs = [llm.tokenizer(text or "", add_special_tokens=False)["input_ids"] for text in texts]
    extra = {"mode": args.mode, "policy": args.policy, "memory": memory, "plan": plan,
             "pipeline_stats": to_jsonable(stats)}
    result = build_result(args, f"pipeline:{args.mode}", prompts, outputs, meter, extra)
    # a row may end early at EOS (wrangling generate stops there); every row must come back
    result["tokens_ok"] = len(texts) == args.rows and stats.parse_failures == 0 and \
        all(text is not None for text in texts)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--mode", default="pipeline", choices=sorted(MODES))
    parser.add_argument("--policy", default="auto", help="auto (planned per column)")
    parser.add_argument("--memory", default=None, help='JSON: {"device": "2GiB", ...}')
    parser.add_argument("--offload-dir", type=Path, default=None, help="parent of the folder")
    emit(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
