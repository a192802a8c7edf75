"""The disk probe's scratch directory is owned like an offload directory: a probe killed with
kill -9 (a first run on a machine) leaves nothing that the next engine does not remove."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine.policy import probes
from engine.storage import disk
from engine.storage.offload_dirs import OWNER_FILE, remove_stale


def test_the_probe_directory_carries_an_owner_record(tmp_path, monkeypatch):
    seen, real_write = [], disk.write_file

    def write_file(path, *args, **kwargs):
        seen.append(json.loads((Path(path).parent / OWNER_FILE).read_text()))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(disk, "write_file", write_file)
    probes.disk_rates(tmp_path, num_bytes=1 << 20)
    assert seen and all(owner["pid"] > 0 for owner in seen)
    assert not list(tmp_path.iterdir())  # removed after the probe


def test_a_dead_probes_directory_is_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / "flexgen-probe-x1"
    left.mkdir()
    (left / "big.bin").write_bytes(b"\0" * 4096)
    (left / OWNER_FILE).write_text(json.dumps({"pid": dead.pid, "start": "1"}))
    assert remove_stale(tmp_path) == [left] and not left.exists()
