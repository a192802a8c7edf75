"""A fixed hardware profile (no measuring in tests) and a private profile cache directory."""

from __future__ import annotations

import pytest

from engine.policy.hardware import HardwareProfile


def fixed_profile(device: str = "cpu") -> HardwareProfile:
    """Rates of a small CPU box: what `load_profile` measured on the development machine."""
    return HardwareProfile(
        device=device,
        free_bytes={"device": 16 << 30, "host": 16 << 30, "disk": 64 << 30},
        bandwidth={"disk->host": 0.9e9, "host->disk": 0.7e9, "host->device": 8e9,
                   "device->host": 8e9, "device->device": 11e9},
        matmul_flops={"float32": 77e9, "bfloat16": 200e9},
        cpu_attention_flops=20e9,
        call_overhead_s=1.5e-4,
        disk_latency_s=1e-4,
        disk_write_latency_s=5e-3,
        dequant_rate=0.3e9,
        matmul_half_rows=0.0,
        key="test",
    )


@pytest.fixture
def profile() -> HardwareProfile:
    return fixed_profile()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own profile cache; an unplanned measurement uses the fixed profile."""
    monkeypatch.setenv("FLEXGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("engine.policy.probes.measure_profile",
                        lambda device, offload_dir=None: fixed_profile(device))
    return tmp_path / "cache"
