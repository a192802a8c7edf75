"""`flexgen-wrangle run --resume`: killed at any moment (kill -9, a full disk, a crash in the
commit), the same command continues, and the output equals an uninterrupted run's, row for
row. Damaged parts are recomputed; another job's parts are refused, naming what differs."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flexgen_wrangle import cli, parts

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["good", "bad", "fine", "awful", "ok", "great", "poor", "nice"]
ROWS, BLOCK_ROWS = 30, 3  # 10 blocks
PAYLOAD_BYTES = 65536  # per row: a part is ~200 KB, the output ~2 MB


def _table() -> pa.Table:
    texts = [None if row % 7 == 3 else f"{WORDS[row % 8]} {WORDS[(row * 3) % 8]}"
             for row in range(ROWS)]
    rng = random.Random(0)
    payload = [rng.randbytes(PAYLOAD_BYTES // 2).hex() for _ in range(ROWS)]
    return pa.table({"id": list(range(ROWS)), "text": texts, "payload": payload})


def _argv(model_dir: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(source), "--column", "text", "--classify", "yes,no", "--model",
            str(model_dir), "--output", str(out), "--block-rows", str(BLOCK_ROWS),
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(wrangle_model_dir, tmp_path_factory):
    """The input and an uninterrupted run's output."""
    work = tmp_path_factory.mktemp("resume")
    source = work / "in.parquet"
    pq.write_table(_table(), source)
    assert cli.main(_argv(wrangle_model_dir, source, work / "reference.parquet")) == 0
    return source, pq.read_table(work / "reference.parquet")


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _part_files(out: Path) -> list[Path]:
    return sorted(_parts_dir(out).glob("part-*.parquet"))


def _crash_at_block(model_dir, source, out, monkeypatch, block_idx: int) -> None:
    """A run that dies while writing `block_idx` (the blocks before it are written)."""
    real_write = parts.PartsDir.write

    def write(self, idx, block, result):
        if idx == block_idx:
            raise KeyboardInterrupt
        real_write(self, idx, block, result)

    monkeypatch.setattr(parts.PartsDir, "write", write)
    assert cli.main(_argv(model_dir, source, out)) == 130
    monkeypatch.setattr(parts.PartsDir, "write", real_write)
    assert len(_part_files(out)) == block_idx and not out.exists()


def test_resume_keeps_written_blocks(wrangle_model_dir, reference, tmp_path, monkeypatch,
                                     capsys):
    source, expected = reference
    out = tmp_path / "out.parquet"
    _crash_at_block(wrangle_model_dir, source, out, monkeypatch, 4)
    assert "--resume" in capsys.readouterr().err
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0
    assert "6 of 10 blocks computed, 4 kept" in capsys.readouterr().out
    assert pq.read_table(out).equals(expected)
    assert not _parts_dir(out).exists()
    assert json.loads(pq.read_schema(out).metadata[parts.MANIFEST_KEY])["block_rows"] == BLOCK_ROWS


def test_resume_of_a_finished_output_is_a_no_op(wrangle_model_dir, reference, tmp_path, capsys):
    source, expected = reference
    out = tmp_path / "out.parquet"
    assert cli.main(_argv(wrangle_model_dir, source, out)) == 0
    before = out.stat().st_mtime_ns
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0
    assert "already complete" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == before and pq.read_table(out).equals(expected)


def test_input_written_again_is_the_same_input_unless_its_rows_changed(
        wrangle_model_dir, tmp_path, capsys, caplog):
    """Not the mtime: the rows. The same rows written again resume (here: already complete);
    rows that changed place (same bytes) are computed again."""
    source, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    lines = ["id,text", *(f"{row},{WORDS[row % 8]:<5} {row % 3}" for row in range(12))]
    source.write_text("\n".join(lines) + "\n")
    assert cli.main(_argv(wrangle_model_dir, source, out)) == 0
    source.write_text("\n".join(lines) + "\n")  # written again: a new mtime
    capsys.readouterr()
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0
    assert "already complete" in capsys.readouterr().out
    lines[1], lines[5] = lines[5], lines[1]  # same size, two rows swapped
    source.write_text("\n".join(lines) + "\n")
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0
    assert "not those it was computed from" in caplog.text
    assert pq.read_table(out).column("id").to_pylist()[:5] == [4, 1, 2, 3, 0]
    fresh = tmp_path / "fresh.parquet"
    assert cli.main(_argv(wrangle_model_dir, source, fresh)) == 0
    assert pq.read_table(out).equals(pq.read_table(fresh))


def test_damaged_parts_are_recomputed(wrangle_model_dir, reference, tmp_path, monkeypatch,
                                      caplog):
    source, expected = reference
    out = tmp_path / "out.parquet"
    _crash_at_block(wrangle_model_dir, source, out, monkeypatch, 5)
    truncated, flipped = _part_files(out)[0], _part_files(out)[2]
    truncated.write_bytes(truncated.read_bytes()[:-40])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    (_parts_dir(out) / ".part-000005.tmp").write_bytes(b"half a part")  # a killed write
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0
    assert pq.read_table(out).equals(expected)
    damaged = [record.getMessage() for record in caplog.records if "damaged" in record.getMessage()]
    assert len(damaged) == 2 and "block 0" in damaged[0] and "block 2" in damaged[1]


def test_resume_refuses_another_job(wrangle_model_dir, wrangle_opt_dir, reference, tmp_path,
                                    monkeypatch, capsys):
    source, _ = reference
    out = tmp_path / "out.parquet"
    _crash_at_block(wrangle_model_dir, source, out, monkeypatch, 3)
    capsys.readouterr()
    changed_input = tmp_path / "changed.parquet"
    pq.write_table(_table().slice(1), changed_input)
    for argv, named in (
        (_argv(wrangle_model_dir, source, out, "--resume", "--classify", "yes,maybe"), "labels"),
        (_argv(wrangle_model_dir, source, out, "--resume", "--block-rows", "4"), "block_rows"),
        (_argv(wrangle_opt_dir, source, out, "--resume"), "model"),
        (_argv(wrangle_model_dir, changed_input, out, "--resume"), "input"),
        (_argv(wrangle_model_dir, source, out, "--resume", "--id-column", "id"), "id_column"),
    ):
        assert cli.main(argv) == 2
        error = capsys.readouterr().err
        assert "different job" in error and named in error, error
        assert len(_part_files(out)) == 3  # refused: nothing removed
    # without --resume: starts over
    assert cli.main(_argv(wrangle_model_dir, source, out, "--classify", "yes,maybe")) == 0
    assert not _parts_dir(out).exists()
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 2  # another job's output
    assert "yes" in capsys.readouterr().err


def test_resume_runs_under_the_pinned_policy(wrangle_model_dir, reference, tmp_path,
                                             monkeypatch, capsys):
    source, _ = reference
    out = tmp_path / "out.parquet"
    _crash_at_block(wrangle_model_dir, source, out, monkeypatch, 2)
    policy_path = _parts_dir(out) / parts.POLICY
    policy = json.loads(policy_path.read_text())
    policy["gpu_batch_size"] = 2
    policy_path.write_text(json.dumps(policy))
    capsys.readouterr()
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0
    assert "gpu_batch_size=2," in capsys.readouterr().out


def test_full_disk_while_writing_a_part(wrangle_model_dir, reference, tmp_path, monkeypatch,
                                        capsys):
    source, expected = reference
    out = tmp_path / "out.parquet"
    real_write, calls = parts.pq.write_table, []

    def write_table(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 4:  # half a file, then the disk is full
            Path(where).write_bytes(b"PAR1" + b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(table, where, **kwargs)

    monkeypatch.setattr(parts.pq, "write_table", write_table)
    assert cli.main(_argv(wrangle_model_dir, source, out)) == 1
    error = capsys.readouterr().err
    assert "No space left on device" in error and "--resume" in error
    assert not out.exists() and len(_part_files(out)) == 3
    assert not list(_parts_dir(out).glob(".*"))  # the half-written temporary is gone
    monkeypatch.setattr(parts.pq, "write_table", real_write)
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0
    assert pq.read_table(out).equals(expected)


def test_failure_inside_the_commit(wrangle_model_dir, reference, tmp_path, monkeypatch):
    """Killed between the joined file and the output: never an output beside parts."""
    source, expected = reference
    out = tmp_path / "out.parquet"
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == out:
            assert not _part_files(out)  # the parts are gone before the output appears
            raise OSError(errno.EIO, "simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(parts.os, "replace", replace)
    assert cli.main(_argv(wrangle_model_dir, source, out)) == 1
    monkeypatch.setattr(parts.os, "replace", real_replace)
    assert not out.exists() and (_parts_dir(out) / parts.JOINED).is_file()
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0
    assert pq.read_table(out).equals(expected) and not _parts_dir(out).exists()


# -- real processes: kill -9 and a file size limit ------------------------------------------


def _start(argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flexgen_wrangle.cli", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _kill_at_random(process: subprocess.Popen, out: Path, rng: random.Random,
                    after_new_part: bool, latest_s: float = 1.0) -> None:
    """SIGKILL at a random moment up to `latest_s` after start, or (`after_new_part`) after the
    run has written one more part than there was when it started."""
    deadline, before = time.monotonic() + 120, len(_part_files(out))
    while after_new_part and len(_part_files(out)) <= before and process.poll() is None:
        assert time.monotonic() < deadline, "no part was written"
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, latest_s))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (out.exists() and _part_files(out)), "an output beside parts"


def test_kill_9_then_resume_equals_uninterrupted(wrangle_model_dir, reference, tmp_path):
    source, expected = reference
    out, seed = tmp_path / "out.parquet", random.randrange(10**6)
    _kill_at_random(_start(_argv(wrangle_model_dir, source, out)), out, random.Random(seed),
                    after_new_part=True)
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0, f"seed {seed}"
    assert pq.read_table(out).equals(expected), f"seed {seed}"


def _limit_file_size(limit: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_file_size_limit_fails_the_join_then_resume(wrangle_model_dir, reference, tmp_path):
    """A real write error (RLIMIT_FSIZE, as a full disk): exit 1, parts kept, resume completes."""
    source, expected = reference
    out = tmp_path / "out.parquet"
    limit = 1 << 20  # above a part, the planner's and the engine's files; below the output
    process = _start(_argv(wrangle_model_dir, source, out), preexec_fn=_limit_file_size(limit))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr.decode()
    assert b"File too large (writing " in stderr and b"--resume" in stderr
    assert not out.exists() and not list(_parts_dir(out).glob(".*"))
    assert len(_part_files(out)) == ROWS // BLOCK_ROWS
    assert cli.main(_argv(wrangle_model_dir, source, out, "--resume")) == 0
    assert pq.read_table(out).equals(expected)


@pytest.mark.slow
def test_kill_9_soak(wrangle_model_dir, reference, tmp_path):
    """Killed again and again at random moments (start-up, mid-block, the join), each time
    resumed by a new process: the final output equals the uninterrupted run's."""
    source, expected = reference
    out, seed = tmp_path / "out.parquet", random.randrange(10**6)
    rng = random.Random(seed)
    argv = _argv(wrangle_model_dir, source, out)
    for kill_idx in range(8):
        process = _start([*argv, "--resume"] if kill_idx else argv)
        if rng.random() < 0.75:  # mid-run: after one more part, within about 3 blocks
            _kill_at_random(process, out, rng, after_new_part=True)
        else:  # anywhere from start-up to the end
            _kill_at_random(process, out, rng, after_new_part=False, latest_s=10.0)
    done = _start([*argv, "--resume"])
    _, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, (seed, stderr.decode())
    assert pq.read_table(out).equals(expected), f"seed {seed}"
    assert not _parts_dir(out).exists()
