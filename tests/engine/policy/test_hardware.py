"""The hardware profile: measured once, cached per machine, re-measured when unusable."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from engine.policy.hardware import HardwareProfile, cache_dir, load_profile, machine_key
from engine.policy.probes import measure_profile
from tests.engine.policy.conftest import fixed_profile


class CountingProbe:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, device: str, offload_dir=None) -> HardwareProfile:
        self.calls += 1
        return fixed_profile(device)


def test_measured_once_then_cached(private_cache):
    probe = CountingProbe()
    first = load_profile("cpu", measure=probe)
    second = load_profile("cpu", measure=probe)
    assert probe.calls == 1
    assert first.bandwidth == second.bandwidth and first.key == machine_key("cpu", None)
    assert list(private_cache.glob("hardware-cpu-*.json"))
    assert second.free_bytes["host"] > 0  # free memory is re-read, not cached
    load_profile("cpu", refresh=True, measure=probe)
    assert probe.calls == 2


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated JSON
        lambda text: "\x00\xff garbage",
        lambda text: json.dumps({**json.loads(text), "version": 0}),  # an older layout
        lambda text: json.dumps({**json.loads(text), "key": "cpu-elsewhere"}),  # another box
        lambda text: json.dumps({**json.loads(text), "bandwidth": {"disk->host": -1}}),
    ],
    ids=["truncated", "garbage", "old-version", "other-machine", "bad-rates"],
)
def test_corrupt_or_stale_cache_is_remeasured_with_a_warning(private_cache, caplog, damage):
    probe = CountingProbe()
    load_profile("cpu", measure=probe)
    (path,) = private_cache.glob("hardware-cpu-*.json")
    path.write_text(damage(path.read_text()))
    with caplog.at_level(logging.WARNING, logger="engine.policy.hardware"):
        profile = load_profile("cpu", measure=probe)
    assert probe.calls == 2
    assert "re-measuring" in caplog.text
    assert HardwareProfile.from_json(path.read_text()).key == profile.key  # repaired


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEXGEN_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FLEXGEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "flexgen-wrangle"


def test_profile_json_round_trip():
    profile = dataclasses.replace(fixed_profile(), key="cpu-abc")
    assert HardwareProfile.from_json(profile.to_json()) == profile


def test_real_measurement_is_quick_and_sane(tmp_path):
    """The probes themselves (a few seconds): every rate positive, the device tier is RAM."""
    profile = measure_profile("cpu", tmp_path)
    assert all(rate > 0 for rate in profile.bandwidth.values())
    assert profile.matmul_flops["float32"] > 1e8 and profile.call_overhead_s > 0
    assert profile.free_bytes["device"] == pytest.approx(profile.free_bytes["host"], rel=0.2)


def test_a_cpu_of_the_same_name_with_other_matmul_flags_is_another_machine(monkeypatch):
    from engine.policy import hardware

    monkeypatch.setattr(hardware, "matmul_flags", lambda: ("fma", "avx2"))
    avx2_only = machine_key("cpu", None)
    monkeypatch.setattr(hardware, "matmul_flags", lambda: ("fma", "avx2", "avx512f", "avx512_bf16"))
    assert machine_key("cpu", None) != avx2_only
