"""One dtype per benchmark invocation, for every system and the floor: `--dtype auto` resolves
through the engine's CPU default, every runner's command carries it, each runner uses it, the
llama.cpp peer reads the dtype's own GGUF (f32 for float32), and the floor's bytes and matmul
rate are the dtype's. Nothing is measured, built or loaded here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import engine
from benchmarks import floor, peers, run, wrangle_peers
from benchmarks.floor import WorkloadShape, compute_floor, link_bytes
from benchmarks.hardware import Hardware
from benchmarks.modelinfo import ModelShape
from benchmarks.report import render_report
from benchmarks.runners import accelerate_offload, hf, llamacpp, ours, vllm_cpu, vllm_wrangle
from benchmarks.runners.common import base_parser
from engine.model import kernels

SHAPE = ModelShape(num_layers=2, hidden_size=4, q_dim=4, kv_dim=4, vocab_size=10,
                   weight_bytes=1000, matmul_params=100, head_params=40, layer_bytes=100)
LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "vocab_size": 1000, "hidden_size": 64,
                "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2}
RUNNER_ARGS = ["--model", "/m", "--rows", "4", "--prompt-len", "8", "--gen-len", "2"]


def _cpu_multiplies_bf16(monkeypatch: pytest.MonkeyPatch, answer: bool) -> None:
    monkeypatch.setattr(kernels, "cpu_multiplies_bf16", lambda: answer)


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


# ---- auto -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("in_hardware", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_is_the_engines_cpu_dtype(monkeypatch: pytest.MonkeyPatch, in_hardware: bool,
                                       expected: str) -> None:
    _cpu_multiplies_bf16(monkeypatch, in_hardware)
    assert run.parse_args([]).dtype == expected
    assert run.parse_args(["--dtype", "auto"]).dtype == expected
    assert wrangle_peers.parse_args([]).dtype == expected
    assert run.parse_args(["--device", "cuda"]).dtype == "bfloat16"
    assert run.parse_args(["--dtype", "float32"]).dtype == "float32"
    assert run.parse_args(["--dtype", "bfloat16"]).dtype == "bfloat16"


# ---- the orchestrator's commands ------------------------------------------------------------
@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkpoint the orchestrator sees without building one (the toy shape, bf16)."""
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    monkeypatch.setattr(run, "ensure_checkpoint", lambda preset: model)
    monkeypatch.setattr(ModelShape, "from_dir", classmethod(lambda cls, path: SHAPE))
    return model


def _commands(args: argparse.Namespace, number: str, tmp_path: Path) -> dict[str, list[str]]:
    ctx = run.make_context(args, number, tmp_path)
    return {system.label: run.runner_command(ctx, system, 4 if system.sweep else None)
            for system in ctx.workload.systems}


@pytest.mark.parametrize(("in_hardware", "dtype", "plain_gguf"),
                         [(True, "bfloat16", "bf16"), (False, "float32", "f32")])
def test_every_runner_gets_the_invocations_dtype(
        monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path, in_hardware: bool,
        dtype: str, plain_gguf: str) -> None:
    _cpu_multiplies_bf16(monkeypatch, in_hardware)
    args = run.parse_args([])  # --dtype auto
    commands = {**_commands(args, "cpu", tmp_path), **_commands(args, "2", tmp_path),
                **_commands(args, "3", tmp_path)}
    runners = {cmd[2].rsplit(".", 1)[-1] for cmd in commands.values()}
    assert runners == {"hf", "ours", "llamacpp", "vllm_cpu", "accelerate_offload", "pipeline"}
    assert {label: _flag(cmd, "--dtype") for label, cmd in commands.items()} == \
        dict.fromkeys(commands, dtype)
    assert _flag(commands[f"llamacpp:{plain_gguf}"], "--gguf-type") == plain_gguf
    assert _flag(commands["llamacpp:q8_0"], "--gguf-type") == "q8_0"  # quantised: as it was


def test_the_memory_plan_is_in_the_dtypes_bytes(model_dir: Path, tmp_path: Path) -> None:
    bf16 = run.make_context(run.parse_args(["--dtype", "bfloat16"]), "2", tmp_path)
    fp32 = run.make_context(run.parse_args(["--dtype", "float32"]), "2", tmp_path)
    assert (bf16.shape.dtype, fp32.shape.dtype) == ("bfloat16", "float32")
    assert fp32.shape.weight_bytes == 2 * bf16.shape.weight_bytes
    assert fp32.memory.weight_budget == 2 * bf16.memory.weight_budget  # still 25% of the weights
    assert fp32.memory.kv_allowance == 2 * bf16.memory.kv_allowance


def test_llamacpp_prepares_and_evicts_the_dtypes_gguf(
        monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path) -> None:
    ctx = run.make_context(run.parse_args(["--dtype", "float32"]), "cpu", tmp_path)
    prepared = []
    monkeypatch.setattr(peers, "prepare", lambda *a: prepared.append(a[:2]) or "stop here")
    (llama,) = [s for s in ctx.workload.systems if s.runner == "llamacpp"]
    run.run_system(ctx, llama)
    assert prepared == [("llamacpp", "f32")]
    assert peers.model_files(llama.runner, llama.policy, model_dir)[0].name == "tiny-f32.gguf"


# ---- each runner uses it --------------------------------------------------------------------
def test_runner_flags_default_to_bf16_as_before() -> None:
    assert base_parser("x").parse_args(RUNNER_ARGS).dtype == "bfloat16"
    assert vllm_wrangle.parser().parse_args(["--spec", "s"]).dtype == "bfloat16"
    plain = llamacpp.parser().parse_args([*RUNNER_ARGS, "--batch", "2"])
    assert llamacpp.gguf_type_of(plain) == "bf16"


def test_hf_and_accelerate_load_in_the_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    loaded: list[dict] = []

    class FakeModel:
        def to(self, device: str) -> FakeModel:
            return self

        def eval(self) -> FakeModel:
            return self

    def from_pretrained(path: Path, **kwargs: object) -> FakeModel:
        loaded.append(kwargs)
        return FakeModel()

    monkeypatch.setattr(hf.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    args = base_parser("x").parse_args([*RUNNER_ARGS, "--dtype", "float32"])
    hf.load_model(args)
    accelerate_offload.load(argparse.Namespace(**vars(args), budget=10, host_budget=None),
                            Path("/o"))
    assert [kwargs["dtype"] for kwargs in loaded] == [torch.float32, torch.float32]


def test_ours_plans_and_builds_the_engine_in_the_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    seen: dict[str, object] = {}

    def fake_plan(model: Path, workload: object, **kwargs: object) -> SimpleNamespace:
        seen["plan"] = kwargs["dtype"]
        return SimpleNamespace(policy="planned")

    def fake_engine(model: str, **kwargs: object) -> str:
        seen["engine"] = kwargs["dtype"]
        return "engine"

    monkeypatch.setattr(engine, "plan", fake_plan)
    monkeypatch.setattr(engine.Engine, "from_pretrained", fake_engine)
    args = argparse.Namespace(policy="auto", prefix_len=0, share_prefix=False, gen_len=2,
                              model=Path("/m"), device="cpu", allow_compression=False,
                              dtype="float32")
    assert ours.load_engine(args, [[5, 6, 7]], Path("/o"), None) == "engine"
    assert seen == {"plan": torch.float32, "engine": torch.float32}


def test_vllm_runs_and_reserves_its_kv_cache_in_the_dtype() -> None:
    args = vllm_cpu.parser().parse_args([*RUNNER_ARGS, "--batch", "2", "--dtype", "float32"])
    assert vllm_cpu.llm_kwargs(args, 16)["dtype"] == "float32"
    assert vllm_cpu.kv_bytes_per_token(LLAMA_CONFIG, "float32") == \
        2 * vllm_cpu.kv_bytes_per_token(LLAMA_CONFIG, "bfloat16")
    assert vllm_wrangle.parser().parse_args(["--spec", "s", "--dtype", "float32"]).dtype == \
        "float32"


def test_llamacpp_runner_reads_the_dtypes_gguf() -> None:
    parser = llamacpp.parser()
    fp32 = parser.parse_args([*RUNNER_ARGS, "--batch", "2", "--dtype", "float32"])
    assert llamacpp.gguf_type_of(fp32) == "f32"
    quantised = parser.parse_args([*RUNNER_ARGS, "--batch", "2", "--dtype", "float32",
                                   "--gguf-type", "q8_0"])
    assert llamacpp.gguf_type_of(quantised) == "q8_0"


def test_wrangle_peers_children_get_the_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_multiplies_bf16(monkeypatch, False)
    commands = wrangle_peers.child_commands(wrangle_peers.parse_args([]), Path("/s.json"))
    assert {name: _flag(cmd, "--dtype") for name, cmd in commands.items()} == \
        {"ours": "float32", "vllm_cpu": "float32"}


# ---- GGUF --------------------------------------------------------------------------------------
@pytest.fixture
def built_llamacpp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A llama.cpp build and source that exist; each step's command recorded, its output made."""
    build = tmp_path / peers.LLAMACPP_BUILD.name / "bin"
    build.mkdir(parents=True)
    for target in peers.LLAMACPP_TARGETS:
        (build / target).write_text("")
    (tmp_path / "src" / "llama_cpp_python-0.1" / "vendor" / "llama.cpp").mkdir(parents=True)
    commands: list[list[str]] = []

    def fake_steps(steps: list[peers.Step], log_path: Path, nice: int = 0) -> None:
        for step in steps:
            commands.append(step.cmd)
            out = _flag(step.cmd, "--outfile") if "--outfile" in step.cmd else step.cmd[2]
            Path(out).write_bytes(b"GGUF")

    monkeypatch.setattr(peers, "run_steps", fake_steps)
    return commands


def test_f32_gguf_is_converted_and_q8_0_quantised_from_it(
        tmp_path: Path, built_llamacpp: list[list[str]]) -> None:
    model = tmp_path / "tiny"
    f32 = peers.ensure_gguf(model, "f32", tmp_path)
    assert f32.name == "tiny-f32.gguf" and f32.is_file()
    assert built_llamacpp[0][-2:] == ["--outtype", "f32"]
    q8 = peers.ensure_gguf(model, "q8_0", tmp_path)
    assert q8.name == "tiny-q8_0.gguf"
    assert built_llamacpp[1][1:] == [str(f32), str(q8.with_name(q8.name + ".tmp")), "Q8_0"]
    assert len(built_llamacpp) == 2  # no bf16 conversion on the way


# ---- the floor ----------------------------------------------------------------------------------
def _hardware(dtype: str, rate: float) -> Hardware:
    return Hardware("cpu", matmul_flops=rate, fast_bandwidth=1e4, offload_bandwidth=1e2,
                    offload_method="O_DIRECT", measured_at="now", matmul_dtype=dtype)


def test_floor_bytes_double_and_its_rate_is_the_dtypes() -> None:
    work = WorkloadShape(rows=4, prompt_len=8, gen_len=4)
    fp32 = SHAPE.in_dtype("float32")
    assert fp32.kv_bytes_per_token() == 2 * SHAPE.kv_bytes_per_token()
    assert link_bytes(fp32, work, 1, None)["fast"] == 2 * link_bytes(SHAPE, work, 1, None)["fast"]
    bf16_floor = compute_floor(SHAPE, work, _hardware("bfloat16", 1e6))
    fp32_floor = compute_floor(fp32, work, _hardware("float32", 4e6))
    assert fp32_floor.compute_s == pytest.approx(bf16_floor.compute_s / 4)
    assert fp32_floor.link_bytes["fast"] == 2 * bf16_floor.link_bytes["fast"]
    with pytest.raises(ValueError, match="matmul rate in float32"):
        compute_floor(fp32, work, _hardware("bfloat16", 1e6))


@pytest.fixture
def probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fake probes (bf16 1e9 FLOP/s, fp32 5e9) on a cache in tmp_path; what each measured."""
    rates = {"bfloat16": 1e9, "float32": 5e9}
    measured: list[str] = []

    def whole(device: str, dtype: str, scratch_dir: Path, quick: bool) -> Hardware:
        measured.append(f"all {dtype}")
        return _hardware(dtype, rates[dtype])

    def matmul(device: str, dtype: str, tokens: int) -> float:
        measured.append(f"matmul {dtype}")
        return rates[dtype]

    monkeypatch.setattr(floor, "HARDWARE_CACHE", tmp_path / "hardware.json")
    monkeypatch.setattr(floor, "cpu_model", lambda: "CPU")
    monkeypatch.setattr(floor, "matmul_flags", lambda: ("avx2",))
    monkeypatch.setattr(floor, "measure_hardware", whole)
    monkeypatch.setattr(floor, "measure_matmul_flops", matmul)
    return measured


def test_the_cached_rate_is_kept_per_dtype(probes: list[str]) -> None:
    first = floor.load_or_measure("cpu", "bfloat16")
    fp32 = floor.load_or_measure("cpu", "float32")
    assert probes == ["all bfloat16", "matmul float32"]  # the links once, the rate per dtype
    assert (first.matmul_flops, first.matmul_dtype) == (1e9, "bfloat16")
    assert (fp32.matmul_flops, fp32.matmul_dtype) == (5e9, "float32")
    assert fp32.fast_bandwidth == first.fast_bandwidth
    assert floor.load_or_measure("cpu", "bfloat16").matmul_flops == 1e9
    assert floor.load_or_measure("cpu", "float32").matmul_flops == 5e9
    assert len(probes) == 2
    (entry,) = json.loads(floor.HARDWARE_CACHE.read_text()).values()
    assert entry["matmul_flops"] == {"bfloat16": 1e9, "float32": 5e9}


def test_an_old_cache_entry_is_a_bf16_rate(probes: list[str]) -> None:
    old = {"device": "cpu", "matmul_flops": 2e9, "fast_bandwidth": 1e4,
           "offload_bandwidth": 1e2, "offload_method": "O_DIRECT", "measured_at": "then"}
    key = floor.cache_key("cpu")
    floor.HARDWARE_CACHE.write_text(json.dumps({key: old}))
    assert floor.load_or_measure("cpu", "bfloat16").matmul_flops == 2e9
    assert floor.load_or_measure("cpu", "float32").matmul_flops == 5e9
    assert probes == ["matmul float32"]


# ---- the report ---------------------------------------------------------------------------------
def test_report_names_the_dtype() -> None:
    hardware = _hardware("float32", 1.05e11)
    work = {"key": "cpu", "title": "in RAM", "model": "qwen2-0.5b", "rows": 4, "prompt_len": 8,
            "gen_len": 4}
    fp32 = SHAPE.in_dtype("float32")
    results = {
        "meta": {"timestamp": "T", "command": "c", "git": "g", "dtype": "float32",
                 "machine": {"cpu": "CPU", "cores": 2, "ram_bytes": 2**34},
                 "versions": {"torch": "2"}},
        "hardware": hardware.__dict__,
        "workloads": [{"workload": work, "dtype": "float32", "weight_bytes": 2 * 2**20,
                       "floor": compute_floor(fp32, WorkloadShape(4, 8, 4), hardware).as_dict(),
                       "runs": [], "summary": [],
                       "memory": {"weight_budget": None, "cap_bytes": None}}],
    }
    text = render_report(results)
    assert "fp32 matmul 0.10 TFLOP/s" in text and "weights 2.00 MiB fp32" in text
    assert "bf16" not in text


def test_a_cpu_of_the_same_name_with_other_flags_is_measured_anew(probes: list[str],
                                                                   monkeypatch) -> None:
    floor.load_or_measure("cpu", "bfloat16")  # an AVX2 box (the fixture's flags)
    monkeypatch.setattr(floor, "matmul_flags", lambda: ("avx2", "avx512f", "avx512_bf16"))
    floor.load_or_measure("cpu", "bfloat16")
    assert probes == ["all bfloat16", "all bfloat16"]
    assert len(json.loads(floor.HARDWARE_CACHE.read_text())) == 2
