"""`make gpu-check` without a GPU: a "no GPU" line in its results file, exit 0, nothing run;
with one, every step's outcome lands in the file and a failed step fails the check."""

from __future__ import annotations

import json

from benchmarks import gpu_check


def test_without_a_gpu_it_skips_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "gpu_name", lambda: None)
    monkeypatch.setattr(gpu_check, "run_step", lambda *args: pytest_fail())
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    assert "no GPU" in json.loads(out.read_text())["result"]
    assert "no GPU" in capsys.readouterr().out


def test_with_a_gpu_every_step_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "gpu_name", lambda: "NVIDIA H200")
    outcomes = {"tests": 0, "benchmark": 1}
    monkeypatch.setattr(gpu_check, "run_step", lambda name, args, limit: {
        "step": name, "ok": outcomes[name] == 0, "rc": outcomes[name], "seconds": 1.0})
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 1
    record = json.loads(out.read_text())
    assert record["device"] == "NVIDIA H200" and not record["ok"]
    assert [step["step"] for step in record["steps"]] == ["tests", "benchmark"]
    assert sum(limit for _, _, limit in gpu_check.STEPS) < 6 * 60


def pytest_fail():
    raise AssertionError("no step may run without a GPU")
