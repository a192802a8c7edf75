"""The disk tier on a bad day: full during construction and during a run, read-only or deleted
while a job runs, a weight file truncated or corrupted behind the engine's back. Each gives an
error naming the tensor, the tier and the file (never wrong tokens), leaves no file behind, and
leaves the process (and, where its files survive, the engine) usable."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import zlib
from pathlib import Path

import pytest
import torch

from engine import Engine, Placement, Policy
from engine.sampling import SamplingParams
from engine.storage import disk
from engine.storage.offload_dirs import OWNER_FILE
from tests.engine.storage.small_disk import read_only, small_disk

PROMPTS = [[3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13, 14], [15, 16]]
PARAMS = SamplingParams(max_new_tokens=6, ignore_eos=True)
ON_DISK = Policy(2, 2, Placement.on("disk"), Placement.on("disk"), Placement.on("host"))
CACHE_ON_DISK = Policy(2, 2, Placement.on("host"), Placement.on("disk"), Placement.on("host"))
ON_HOST = Policy(2, 2, Placement.on("host"), Placement.on("host"), Placement.on("host"))


@pytest.fixture(scope="module")
def reference(model_dirs) -> list[list[int]]:
    with Engine.from_pretrained(model_dirs("llama"), policy=ON_HOST, dtype=torch.float32) as eng:
        return eng.generate(PROMPTS, PARAMS)


def _engine(model_dirs, policy: Policy, where: Path, **kwargs) -> Engine:
    return Engine.from_pretrained(model_dirs("llama"), policy=policy, dtype=torch.float32,
                                  offload_dir=where, **kwargs)


def _files(eng: Engine) -> set[str]:
    return {path.name for path in eng.offload_dir.iterdir()}


def _used(eng: Engine) -> dict[str, int]:
    """Bytes charged per tier (the ledger's counters, zeros dropped)."""
    return {tier: used for tier, used in eng._tiers.ledger.used.items() if used}


def _weight_file(eng: Engine, layer: int, name: str) -> Path:
    return eng._weights[layer][name].path


def test_a_full_disk_during_construction(model_dirs, reference, tmp_path, monkeypatch):
    """The user's disk budget says 1 GiB; the file system holds 64 KiB (the weights: ~200)."""
    with small_disk(tmp_path / "disk", 64 * 1024, monkeypatch) as root:
        with pytest.raises(OSError) as caught:
            _engine(model_dirs, ON_DISK, root, memory={"disk": "1GiB"})
        message = str(caught.value)
        assert caught.value.errno == errno.ENOSPC
        assert f"the disk tier ({root}/flexgen-" in message and "more were needed" in message
        assert "of weights on the disk tier" in message and "larger disk" in message
        assert not list(root.iterdir())  # partial files and the offload directory removed
        with _engine(model_dirs, ON_HOST, root) as smaller:  # the same process, a smaller policy
            assert smaller.generate(PROMPTS, PARAMS) == reference


def test_a_full_disk_during_a_run(model_dirs, reference, tmp_path, monkeypatch):
    """KV cache on a disk that another program fills after the engine took its budget: the
    big call fails, its files are removed, the ledger is as before, and once there is room
    again the same engine runs right."""
    with small_disk(tmp_path / "disk", 1 << 20, monkeypatch) as root:
        with _engine(model_dirs, CACHE_ON_DISK, root) as eng:
            used = _used(eng)
            hog = root / "other-program.bin"
            hog.write_bytes(b"x" * (shutil.disk_usage(root).free - 32 * 1024))
            with pytest.raises(OSError, match=r"the disk tier \(.*\) is full: .* more were needed"):
                eng.generate(PROMPTS * 8, SamplingParams(max_new_tokens=40, ignore_eos=True))
            assert _files(eng) == {OWNER_FILE}
            assert _used(eng) == used
            hog.unlink()
            assert eng.generate(PROMPTS, PARAMS) == reference
        assert not list(root.iterdir())


def test_a_read_only_offload_directory_while_running(model_dirs, reference, tmp_path,
                                                      monkeypatch):
    with small_disk(tmp_path / "disk", 4 << 20, monkeypatch) as root:
        with _engine(model_dirs, ON_DISK, root) as eng:
            before = _files(eng)
            with read_only(root), pytest.raises(OSError, match=r"must stay writable"):
                eng.generate(PROMPTS, PARAMS)
            assert _files(eng) == before
            assert eng.generate(PROMPTS, PARAMS) == reference  # writable again: usable


def _flip_byte(path: Path, offset: int) -> bytes:
    original = path.read_bytes()
    data = bytearray(original)
    data[offset] ^= 0x01  # one bit of one float: a size check alone cannot see it
    path.write_bytes(bytes(data))
    return original


@pytest.mark.parametrize("damage", ["bit flip", "truncated", "extended"])
def test_a_damaged_weight_file_is_an_error_never_wrong_tokens(model_dirs, reference, tmp_path,
                                                              damage):
    with _engine(model_dirs, ON_DISK, tmp_path) as eng:
        target = _weight_file(eng, 1, "down_proj" if "down_proj" in eng._weights[1] else
                              sorted(eng._weights[1])[0])
        original = target.read_bytes()
        if damage == "bit flip":
            _flip_byte(target, 100)
        elif damage == "truncated":
            target.write_bytes(original[:-disk.ALIGN])
        else:
            target.write_bytes(original + b"\0" * disk.ALIGN)
        used = _used(eng)
        with pytest.raises(disk.OffloadFileError) as caught:
            eng.generate(PROMPTS, PARAMS)
        message = str(caught.value)
        assert "layer 1 weight" in message and "on the disk tier" in message
        assert str(target) in message and "build it again" in message
        assert _used(eng) == used
        target.write_bytes(original)  # repaired: the same engine is right again
        assert eng.generate(PROMPTS, PARAMS) == reference


def test_a_deleted_offload_directory(model_dirs, tmp_path):
    with _engine(model_dirs, ON_DISK, tmp_path) as eng:
        shutil.rmtree(eng.offload_dir)
        with pytest.raises(disk.OffloadFileError, match=r"weight .* is gone \(was the offload "
                                                        r"directory deleted\?\)"):
            eng.generate(PROMPTS, PARAMS)
    assert not list(tmp_path.iterdir())


def test_a_corrupted_cache_file_between_tokens(model_dirs, reference, tmp_path, monkeypatch):
    """A KV cache file changed between its store and its next load (after a token's drain)."""
    from engine.schedule.executor import Executor

    with _engine(model_dirs, CACHE_ON_DISK, tmp_path) as eng:
        real_drain, tokens = Executor.drain, []

        def drain(self):
            real_drain(self)
            tokens.append(1)
            if len(tokens) == 3:  # after the third token's stores: damage one cache file
                cache = min(p for p in eng.offload_dir.glob("t*.bin"))
                _flip_byte(cache, 8)

        monkeypatch.setattr(Executor, "drain", drain)
        with pytest.raises(disk.OffloadFileError, match=r"KV cache of layer \d+ on the disk tier"):
            eng.generate(PROMPTS, PARAMS)
        assert _files(eng) == {OWNER_FILE}
        monkeypatch.setattr(Executor, "drain", real_drain)
        assert eng.generate(PROMPTS, PARAMS) == reference


@pytest.mark.parametrize("digest", ["crc32", "xxh3-64"])
def test_either_checksum_catches_a_flipped_bit(tmp_path, monkeypatch, digest):
    """The checksum is xxh3-64 when `xxhash` is installed, CRC-32 otherwise: both verify."""
    if digest == "xxh3-64":
        xxhash = pytest.importorskip("xxhash")
        monkeypatch.setattr(disk, "_digest", xxhash.xxh3_64_intdigest)
    else:
        monkeypatch.setattr(disk, "_digest", zlib.crc32)
    path, data = tmp_path / "t.bin", torch.arange(3000, dtype=torch.float32)
    checksum = disk.write_file(path, data, checksum=True)
    assert torch.equal(disk.read_file(path, 12000, checksum=checksum).view(torch.float32), data)
    _flip_byte(path, 11999)
    with pytest.raises(disk.OffloadFileError, match=f"{path} is corrupted"):
        disk.read_file(path, 12000, checksum=checksum)


def _read_only_after(monkeypatch, root: Path, stack: contextlib.ExitStack, drains: int) -> list:
    """Make `root` read-only once `drains` token drains have run; returns the drain counter."""
    from engine.schedule.executor import Executor

    real_drain, count = Executor.drain, []

    def drain(self):
        real_drain(self)
        count.append(1)
        if len(count) == drains:
            stack.enter_context(read_only(root))

    monkeypatch.setattr(Executor, "drain", drain)
    return count


@pytest.mark.parametrize("when", ["mid-call", "after the last write"])
def test_read_only_during_a_call(model_dirs, reference, tmp_path, monkeypatch, when):
    """Remounted read-only after the second token: the call fails naming the tier, the ledger
    is as before, the next call is right. After the last write: the block's files cannot be
    removed, yet the call returns its (right) tokens; close removes what stayed."""
    with small_disk(tmp_path / "disk", 4 << 20, monkeypatch) as root:
        if not os.path.ismount(root):
            pytest.skip("needs a real read-only file system (mount)")
        with _engine(model_dirs, CACHE_ON_DISK, root) as eng:
            used = _used(eng)
            with contextlib.ExitStack() as stack:
                count = _read_only_after(monkeypatch, root, stack, drains=0)
                eng.generate(PROMPTS, PARAMS)  # counts the drains of a whole call
                last = len(count)
            with contextlib.ExitStack() as stack:
                _read_only_after(monkeypatch, root, stack, 2 if when == "mid-call" else last - 1)
                if when == "mid-call":
                    with pytest.raises(OSError, match=r"cannot take .*Read-only file system"):
                        eng.generate(PROMPTS, PARAMS)
                else:
                    assert eng.generate(PROMPTS, PARAMS) == reference
                assert _used(eng) == used
            monkeypatch.undo()
            assert eng.generate(PROMPTS, PARAMS) == reference
        assert not list(root.iterdir())
