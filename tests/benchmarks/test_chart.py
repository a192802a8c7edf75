"""benchmarks.chart: the ratios it draws come from the recorded summaries (ours over each
peer, the floor's share), the newest file with a peer wins, and the PNG is written."""

from __future__ import annotations

import json

import pytest

from benchmarks import chart


def _workload(key: str, ours: float, peers: dict[str, float], x_floor: float = 2.0) -> dict:
    rows = [{"label": "ours:auto", "runner": "ours", "tok_per_s": ours, "x_floor": x_floor}]
    rows += [{"label": label, "runner": label.split(":")[0], "tok_per_s": rate}
             for label, rate in peers.items()]
    return {"workload": {"key": key}, "summary": rows}


def test_ratios_are_ours_over_each_peer_and_the_floor_share():
    got = chart.ratios(_workload("cpu", 90.0, {"hf": 45.0, "vllm_cpu": 100.0}, x_floor=4.0))
    assert got == {"vs hf": 2.0, "vs vllm_cpu": 0.9, "of floor": 0.25}
    assert chart.ratios(_workload("1", 90.0, {})) == {}  # no peer: nothing to draw


def test_the_newest_file_with_a_peer_wins(tmp_path):
    old, new, alone = (tmp_path / f"2026120{i}T000000Z.json" for i in (1, 2, 3))
    old.write_text(json.dumps({"workloads": [_workload("1", 10.0, {"hf": 10.0})]}))
    new.write_text(json.dumps({"workloads": [_workload("1", 30.0, {"hf": 10.0})]}))
    alone.write_text(json.dumps({"workloads": [_workload("1", 99.0, {})]}))
    assert chart.workload_groups([old, new, alone])["workload 1"]["vs hf"] == 3.0


def test_each_machine_has_its_group_and_missing_peers_come_from_its_earlier_files(tmp_path):
    def record(machine: dict, ours: float, peers: dict[str, float]) -> dict:
        return {"meta": {"machine": machine}, "workloads": [_workload("cpu", ours, peers)]}

    epyc, xeon = {"cpu": "EPYC"}, {"cpu": "Xeon"}
    files = [tmp_path / f"2026120{i}T000000Z.json" for i in range(1, 5)]
    contents = [record(epyc, 20.0, {"llamacpp:bf16": 2.0, "hf": 5.0}),
                record(xeon, 20.0, {"accelerate_offload": 1.0}),  # another machine: never merged
                record(epyc, 30.0, {"hf": 10.0, "vllm_cpu": 30.0}),
                record({}, 99.0, {})]  # no peer: ignored
    for path, content in zip(files, contents, strict=True):
        path.write_text(json.dumps(content))
    groups = chart.workload_groups(files)
    assert groups == {  # a group per machine, never merged across them
        "workload cpu\n(EPYC, bf16)": {"vs llamacpp:bf16": 10.0, "vs hf": 3.0,
                                       "vs vllm_cpu": 1.0, "of floor": 0.5},
        "workload cpu\n(Xeon, bf16)": {"vs accelerate_offload": 20.0, "of floor": 0.5}}


def test_each_workload_is_labelled_with_its_machine_and_dtype(tmp_path):
    def record(cpu: str, flags: list[str] | None, dtype: str) -> dict:
        machine = {"cpu": cpu, **({"cpu_flags": flags} if flags is not None else {})}
        return {"meta": {"machine": machine},
                "workloads": [dict(_workload("cpu", 10.0, {"hf": 5.0}), dtype=dtype)]}

    cases = [(record("AMD EPYC", ["fma", "avx2"], "float32"), "(AMD EPYC, avx2, fp32)"),
             (record("AMD EPYC", ["avx2", "avx512f", "avx512_bf16"], "bfloat16"),
              "(AMD EPYC, avx512_bf16, bf16)"),
             (record("Xeon", ["avx512_bf16", "amx_tile", "amx_bf16"], "bfloat16"),
              "(Xeon, amx_bf16, bf16)"),
             (record("Xeon", None, "bfloat16"), "(Xeon, bf16)")]  # recorded before the flags
    for idx, (content, expected) in enumerate(cases):
        path = tmp_path / f"2026120{idx}T000000Z.json"
        path.write_text(json.dumps(content))
        (label,) = chart.workload_groups([path])
        assert label == f"workload cpu\n{expected}"


def test_wrangle_ratios_include_the_load():
    def run(load: float, seconds: float) -> dict:
        return {"summary": {"load_s": load, "columns": {"reviews": {"seconds": seconds}}},
                "raw": {"columns": [{"name": "reviews", "rows": 100}]}}

    record = {"runs": {"ours": [run(1.0, 1.0)], "vllm_cpu": [run(90.0, 10.0)]}}
    assert chart.wrangle_ratios(record) == {"wrangle: reviews": {"vs vllm_cpu": 50.0}}
    record.update(machine={"cpu": "EPYC", "cpu_flags": ["avx2"]}, dtype="float32")
    assert chart.wrangle_ratios(record) == {
        "wrangle: reviews\n(EPYC, avx2, fp32)": {"vs vllm_cpu": 50.0}}


def test_draw_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "ratios.png"
    chart.draw({"workload cpu": {"vs hf": 2.0, "of floor": 0.5}}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
