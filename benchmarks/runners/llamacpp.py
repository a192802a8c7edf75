"""llama.cpp (built by `benchmarks.peers`) on a GGUF of the checkpoint, read through mmap.

    python -m benchmarks.runners.llamacpp --model DIR --rows 256 --prompt-len 64 --gen-len 32 \
        --batch 64 [--dtype bfloat16|float32] [--gguf-type bf16|f32|q8_0] \
        [--mode server|batched-bench]

`server` (default): `llama-server` with --batch parallel slots and continuous batching; every
prompt is sent as token ids (greedy, EOS ignored, exactly --gen-len new ids, prompt caching
only for the wrangling prompts), --batch requests in flight, so its generated ids are hashed
like everyone's. `batched-bench`: `llama-batched-bench -npp L -ntg G -npl B` in rounds of --batch
sequences (random ids of its own, so no ids hash; fixed prompt length only). The GGUF is the
--dtype's plain one (bf16 or f32) unless --gguf-type names another (q8_0).

The GGUF is mmap'ed (`--load-mode mmap`) and weight repacking is off (`--no-repack`: the AMX
int8 path died with SIGILL on this VM, and repacked weights would be copied into anonymous
memory), so under a cgroup cap the weights live in page cache charged to the run and are read
again from disk when the cap evicts them. Load (start until /health answers) is excluded from
tok/s like every runner's. Peak RSS: this process plus the server's VmHWM; disk reads: the
server's. This process never imports torch (the prompts are made in a short-lived child).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from benchmarks import peers
from benchmarks.runners.common import Meter, base_parser, build_result, emit, peak_rss_bytes
from benchmarks.runners.proctree import TreeSampler, proc_io, status_kib

HOST = "127.0.0.1"
LOAD_TIMEOUT_S = 900.0
REQUEST_TIMEOUT_S = 7200.0


# ---- prompts (in a child: importing torch here would be charged to the peer) ----------------
def child_prompts(args: argparse.Namespace) -> list[list[int]]:
    vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    spec = [args.prompts, args.rows, args.prompt_len, args.prefix_len, vocab, args.seed]
    code = ("import json, sys; from benchmarks.runners.common import make_prompts; "
            "json.dump(make_prompts(*json.loads(sys.argv[1])), sys.stdout)")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], check=True,
                         capture_output=True, text=True, cwd=Path(peers.BENCH_DIR).parent)
    return json.loads(out.stdout)


# ---- commands -----------------------------------------------------------------------------
def gguf_type_of(args: argparse.Namespace) -> str:
    """--gguf-type, else the dtype's plain GGUF type (bfloat16: bf16, float32: f32)."""
    return args.gguf_type or peers.PLAIN_GGUF_TYPES[args.dtype]


def threads_of(args: argparse.Namespace) -> int:
    return args.threads or os.cpu_count() or 1


def slot_ctx(prompts: list[list[int]], gen_len: int) -> int:
    """Positions one sequence needs: its prompt and the new ids (the last is never fed)."""
    return max(len(p) for p in prompts) + gen_len


def server_command(server: Path, gguf: Path, args: argparse.Namespace, ctx_per_slot: int,
                   port: int) -> list[str]:
    threads = str(threads_of(args))
    return [
        str(server), "-m", str(gguf), "--host", HOST, "--port", str(port),
        "-t", threads, "-tb", threads,
        "--parallel", str(args.batch), "--ctx-size", str(args.batch * ctx_per_slot),
        # one KV buffer of exactly --batch x ctx_per_slot cells shared by the slots: split per
        # slot, llama.cpp pads each slot to 256 cells (2 GiB more at 256 slots on Llama-1B)
        "--kv-unified",
        "--cont-batching", "--batch-size", str(args.n_batch), "--ubatch-size", str(args.n_ubatch),
        "--load-mode", args.load_mode, "--no-repack", "--fit", "off",
        "--cache-ram", "0",  # no RAM prompt cache beside the KV cache (it would use the cap)
        "--no-webui", "--seed", "0",
    ]


def request_body(prompt: list[int], gen_len: int, cache_prompt: bool) -> dict:
    return {"prompt": prompt, "n_predict": gen_len, "temperature": 0.0, "top_k": 1,
            "ignore_eos": True, "cache_prompt": cache_prompt, "return_tokens": True,
            "stream": False, "seed": 0}


def batched_bench_command(bench: Path, gguf: Path, args: argparse.Namespace,
                          rounds: list[int]) -> list[str]:
    threads = str(threads_of(args))
    ctx = max(rounds) * (args.prompt_len + args.gen_len)
    return [
        str(bench), "-m", str(gguf), "-c", str(ctx), "-b", str(args.n_batch),
        "-ub", str(args.n_ubatch), "-npp", str(args.prompt_len), "-ntg", str(args.gen_len),
        "-npl", ",".join(map(str, rounds)), "-t", threads, "-tb", threads,
        "--load-mode", args.load_mode, "--no-repack", "--kv-unified",
    ]


def bench_rounds(rows: int, batch: int) -> list[int]:
    """rows sequences as rounds of `batch` parallel ones (the last round may be smaller)."""
    return [batch] * (rows // batch) + ([rows % batch] if rows % batch else [])


_BENCH_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|" +
                        r"\s*([\d.]+)\s*\|" * 6)


def parse_batched_bench(text: str) -> list[dict]:
    """Its table: | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |."""
    rows = []
    for line in text.splitlines():
        match = _BENCH_ROW.match(line.strip())
        if match:
            pp, tg, b, n_kv = (int(match.group(i)) for i in range(1, 5))
            t_pp, s_pp, t_tg, s_tg, t, s = (float(match.group(i)) for i in range(5, 11))
            rows.append({"pp": pp, "tg": tg, "b": b, "n_kv": n_kv, "t_pp": t_pp, "s_pp": s_pp,
                         "t_tg": t_tg, "s_tg": s_tg, "t": t, "s": s})
    return rows


# ---- the server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http_json(url: str, body: dict | None = None, timeout: float = REQUEST_TIMEOUT_S):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read() or b"null")


def wait_ready(proc: subprocess.Popen, base: str, timeout_s: float = LOAD_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with rc={proc.returncode} while loading")
        try:
            status, _ = http_json(f"{base}/health", timeout=5)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"llama-server not ready after {timeout_s:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def server_phase(meter: Meter, name: str, pid: int):
    """Meter.phase, but the disk reads are the server's (it does the I/O, not this process)."""
    before = proc_io(pid)
    start = time.perf_counter()
    yield
    meter.seconds[name] = time.perf_counter() - start
    after = proc_io(pid)
    meter.read_bytes[name] = after.get("read_bytes", 0) - before.get("read_bytes", 0)
    meter.write_bytes[name] = after.get("write_bytes", 0) - before.get("write_bytes", 0)


def complete_all(base: str, prompts: list[list[int]], gen_len: int, in_flight: int,
                 cache_prompt: bool) -> tuple[list[list[int]], dict]:
    """All prompts, `in_flight` requests at a time (one per slot), outputs in input order."""
    def one(prompt: list[int]) -> dict:
        _, reply = http_json(f"{base}/completion", request_body(prompt, gen_len, cache_prompt))
        return reply

    with ThreadPoolExecutor(max_workers=max(1, in_flight)) as pool:
        replies = list(pool.map(one, prompts))
    outputs = [list(reply.get("tokens") or []) for reply in replies]
    timings = [reply.get("timings") or {} for reply in replies]
    totals = {key: sum(t.get(key, 0) for t in timings)
              for key in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "cache_n")}
    return outputs, totals


def run_server(args: argparse.Namespace, gguf: Path, prompts: list[list[int]]) -> dict:
    meter = Meter()
    port = free_port()
    base = f"http://{HOST}:{port}"
    cmd = server_command(peers.llamacpp_bin("llama-server"), gguf, args,
                         slot_ctx(prompts, args.gen_len), port)
    print(f"[llamacpp] {' '.join(cmd)}", file=sys.stderr, flush=True)
    cache_prompt = args.prompts == "wrangling" if args.cache_prompt == "auto" else \
        args.cache_prompt == "on"
    # its log to our fd 2 (the run's .err file under benchmarks.run)
    proc = subprocess.Popen(cmd, stdout=2, stderr=2, stdin=subprocess.DEVNULL)
    try:
        with TreeSampler() as tree:
            with server_phase(meter, "load", proc.pid):
                wait_ready(proc, base)
            if args.warmup_tokens:
                with server_phase(meter, "warmup", proc.pid):
                    warm = prompts[: max(1, min(args.warmup_rows, len(prompts)))]
                    complete_all(base, warm, args.warmup_tokens, args.batch, False)
            with server_phase(meter, "generate", proc.pid):
                outputs, timings = complete_all(base, prompts, args.gen_len, args.batch,
                                                cache_prompt)
            tree.sample()
            server_mem = status_kib(proc.pid)
    finally:
        stop(proc)
    extra = {"batch": args.batch, "mode": "server", "gguf": str(gguf),
             "gguf_type": gguf_type_of(args), "load_mode": args.load_mode,
             "cache_prompt": cache_prompt, "server_timings": timings,
             "server_rss": server_mem, "process_tree": tree.as_dict(), "command_peer": cmd}
    result = build_result(args, "llamacpp", prompts, outputs, meter, extra)
    result["peak_rss_bytes"] = max(tree.peak_bytes,
                                   peak_rss_bytes() + server_mem.get("VmHWM", 0))
    return result


def run_batched_bench(args: argparse.Namespace, gguf: Path) -> dict:
    """No ids: tokens are counted from its table, time is the sum of its rounds' T."""
    rounds = bench_rounds(args.rows, args.batch)
    cmd = batched_bench_command(peers.llamacpp_bin("llama-batched-bench"), gguf, args, rounds)
    print(f"[llamacpp] {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with TreeSampler() as tree:
        out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    sys.stderr.write(out.stderr)
    table = parse_batched_bench(out.stdout + out.stderr)
    if out.returncode != 0 or len(table) != len(rounds):
        raise RuntimeError(f"llama-batched-bench rc={out.returncode}, {len(table)} of "
                           f"{len(rounds)} rounds parsed")
    generate_s = sum(row["t"] for row in table)
    gen_tokens = sum(row["b"] * row["tg"] for row in table)
    return {
        "system": "llamacpp", "variant": args.variant, "model": str(args.model),
        "rows": args.rows, "prompt_len": args.prompt_len, "gen_len": args.gen_len,
        "device": args.device, "dtype": args.dtype, "prompts": args.prompts,
        "prompt_tokens": sum(row["b"] * row["pp"] for row in table), "gen_tokens": gen_tokens,
        "tokens_ok": gen_tokens == args.rows * args.gen_len,
        "load_s": max(0.0, wall - generate_s), "warmup_s": 0.0, "generate_s": generate_s,
        "tok_per_s": gen_tokens / generate_s, "rows_per_s": args.rows / generate_s,
        "e2e_tok_per_s": gen_tokens / wall, "peak_rss_bytes": tree.peak_bytes,
        "read_bytes": None, "read_bytes_generate": None, "warmup_tokens": 0,
        "write_bytes": None, "outputs_sha": None, "pid": os.getpid(),
        "batch": args.batch, "mode": "batched-bench", "gguf": str(gguf),
        "gguf_type": gguf_type_of(args), "load_mode": args.load_mode, "bench_rounds": table,
        "command_peer": cmd,
    }


def run(args: argparse.Namespace) -> dict:
    if args.device != "cpu":
        raise SystemExit("the llama.cpp peer is a CPU build (--device cpu)")
    if args.prompts == "wrangling" and args.mode == "batched-bench":
        raise SystemExit("batched-bench has one prompt length: use --mode server")
    reason = peers.unavailable("llamacpp")
    if reason:
        raise SystemExit(f"skipped: {reason}")
    gguf = args.gguf or peers.gguf_path(args.model, gguf_type_of(args))
    if not gguf.is_file():
        raise SystemExit(f"skipped: no GGUF at {gguf} (python -m benchmarks.peers gguf "
                         f"{args.model.name} --type {gguf_type_of(args)})")
    if args.mode == "batched-bench":
        return run_batched_bench(args, gguf)
    return run_server(args, gguf, child_prompts(args))


def parser() -> argparse.ArgumentParser:
    out = base_parser(__doc__.splitlines()[0])
    out.add_argument("--batch", type=int, required=True, help="parallel sequences (slots)")
    out.add_argument("--gguf-type", default=None, choices=peers.GGUF_TYPES,
                     help="default: the --dtype's plain type (bf16 or f32)")
    out.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the cache's)")
    out.add_argument("--mode", default="server", choices=["server", "batched-bench"])
    out.add_argument("--load-mode", default="mmap", choices=["mmap", "none", "dio"],
                     help="llama.cpp --load-mode (mmap: its default on a CPU)")
    out.add_argument("--cache-prompt", default="auto", choices=["auto", "on", "off"],
                     help="server prompt caching (auto: on for wrangling prompts only)")
    out.add_argument("--n-batch", type=int, default=2048, help="llama.cpp -b (logical batch)")
    out.add_argument("--n-ubatch", type=int, default=512, help="llama.cpp -ub (physical batch)")
    return out


def main(argv: list[str] | None = None) -> None:
    emit(run(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
