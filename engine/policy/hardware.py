"""`HardwareProfile`: what this machine can do, measured once and cached as JSON.

The cache lives in `$FLEXGEN_CACHE_DIR`, else `$XDG_CACHE_HOME/flexgen-wrangle`, else
`~/.cache/flexgen-wrangle`, one file per machine key (host, CPU model and its matmul ISA flags,
RAM, GPU, offload disk). A corrupt or stale file is re-measured with a warning. Free memory is
re-read on every load (it changes; the rates do not).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from engine.memory_limit import available_memory
from engine.policy.cpu import cpu_model, matmul_flags

logger = logging.getLogger(__name__)

PROFILE_VERSION = 4
LINKS = ("disk->host", "host->disk", "host->device", "device->host", "device->device")


@dataclass(frozen=True)
class HardwareProfile:
    device: str  # "cpu" or "cuda"
    free_bytes: dict[str, int]  # tier -> bytes free (device, host, disk at the offload dir)
    bandwidth: dict[str, float]  # link (LINKS) -> bytes/s; device->device is memory bandwidth
    matmul_flops: dict[str, float]  # dtype name ("float32", ...) -> FLOP/s of a large matmul
    cpu_attention_flops: float  # FLOP/s of decode attention on the host CPU (fp32)
    call_overhead_s: float  # fixed cost of one layer compute in the engine (dispatch, Python)
    disk_latency_s: float  # fixed cost of one offload-file read
    disk_write_latency_s: float  # fixed cost of one offload-file write (it syncs)
    dequant_rate: float  # elements/s that 4-bit codes are dequantized (or quantized) at
    # rows of a matmul at which it runs at half the large one's rate: decode steps multiply a
    # few rows by each weight and run far below the peak (measured 0.07 vs 0.8 TFLOP/s, bf16)
    matmul_half_rows: float
    key: str = ""
    version: int = PROFILE_VERSION

    def flops(self, dtype: torch.dtype, rows: float | None = None) -> float:
        """FLOP/s of a matmul in `dtype`; of one with `rows` rows (tokens) when given."""
        name = str(dtype).removeprefix("torch.")
        peak = self.matmul_flops.get(name) or min(self.matmul_flops.values())
        return peak if rows is None else peak * rows / (rows + self.matmul_half_rows)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HardwareProfile:
        """Raises ValueError when the text is not a complete profile of this version."""
        try:
            raw = json.loads(text)
            version = raw.get("version")
            if version != PROFILE_VERSION:
                raise ValueError(f"profile version {version}, expected {PROFILE_VERSION}")
            profile = cls(**raw)
        except (json.JSONDecodeError, TypeError, AttributeError) as err:
            raise ValueError(f"not a hardware profile: {err}") from err
        rates = [*profile.bandwidth.values(), *profile.matmul_flops.values()]
        if set(profile.bandwidth) != set(LINKS) or not profile.matmul_flops or not all(
                isinstance(rate, int | float) and rate > 0 for rate in rates):
            raise ValueError("profile has missing or non-positive rates")
        return profile


def nominal_profile(device: str) -> HardwareProfile:
    """Typical rates (a recent server CPU, NVMe, PCIe 4), for when measuring is impossible."""
    gpu = device == "cuda"
    return HardwareProfile(
        device=device, free_bytes={},
        bandwidth={"disk->host": 2e9, "host->disk": 1e9, "host->device": 20e9 if gpu else 10e9,
                   "device->host": 20e9 if gpu else 10e9, "device->device": 1e12 if gpu else 20e9},
        matmul_flops={"float32": 20e12 if gpu else 100e9, "bfloat16": 150e12 if gpu else 200e9,
                      "float16": 150e12 if gpu else 200e9},
        cpu_attention_flops=20e9, call_overhead_s=1e-4, disk_latency_s=1e-4,
        disk_write_latency_s=2e-3, dequant_rate=50e9 if gpu else 0.3e9,
        matmul_half_rows=64.0, key="nominal")


def cache_dir() -> Path:
    if os.environ.get("FLEXGEN_CACHE_DIR"):
        return Path(os.environ["FLEXGEN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flexgen-wrangle"


def disk_root(offload_dir: str | Path | None) -> Path:
    """The existing directory the offload files will live under."""
    root = Path(offload_dir) if offload_dir is not None else Path(tempfile.gettempdir())
    while not root.exists():
        root = root.parent
    return root


def free_bytes(device: str, offload_dir: str | Path | None) -> dict[str, int]:
    """Free bytes per tier now (RAM capped by the memory cgroup). On a CPU the device tier is a
    pool inside the same RAM."""
    ram = available_memory()
    on_device = int(torch.cuda.mem_get_info()[0]) if device == "cuda" else ram
    return {"device": on_device, "host": ram, "disk": int(shutil.disk_usage(disk_root(offload_dir)).free)}


def machine_key(device: str, offload_dir: str | Path | None) -> str:
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none"
    parts = [platform.node(), platform.machine(), cpu_model(), ",".join(matmul_flags()),
             str(os.cpu_count()), str(psutil.virtual_memory().total), gpu,
             str(disk_root(offload_dir).stat().st_dev), torch.__version__]
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]
    return f"{device}-{digest}"


def load_profile(
    device: str | torch.device | None = None, offload_dir: str | Path | None = None,
    refresh: bool = False, measure: Callable[..., HardwareProfile] | None = None,
) -> HardwareProfile:
    """The cached profile of this machine, measured (a few seconds) when missing, unreadable,
    stale, or when `refresh` asks for it."""
    if measure is None:
        from engine.policy.probes import measure_profile as measure
    kind = torch.device(device).type if device is not None else (
        "cuda" if torch.cuda.is_available() else "cpu")
    key = machine_key(kind, offload_dir)
    path = cache_dir() / f"hardware-{key}.json"
    profile = None if refresh else _read_cached(path, key)
    if profile is None:
        profile = dataclasses.replace(measure(kind, offload_dir), key=key)
        _write_cached(path, profile)
    return dataclasses.replace(profile, free_bytes=free_bytes(kind, offload_dir))


def _read_cached(path: Path, key: str) -> HardwareProfile | None:
    if not path.exists():
        return None
    try:
        profile = HardwareProfile.from_json(path.read_text())
        if profile.key != key:
            raise ValueError(f"it was measured on another machine ({profile.key})")
        return profile
    except (OSError, UnicodeDecodeError, ValueError) as err:
        logger.warning("hardware profile %s is unusable (%s); re-measuring", path, err)
        return None


def _write_cached(path: Path, profile: HardwareProfile) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(profile.to_json())
        tmp.replace(path)
    except OSError as err:  # a read-only home is no reason to fail planning
        logger.warning("cannot cache the hardware profile at %s: %s", path, err)
