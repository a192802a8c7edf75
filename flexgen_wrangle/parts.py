"""The staging directory of one `flexgen-wrangle run` output, so that a run killed at any moment
(kill -9, a full disk, a reboot) continues with `--resume`: nothing lost, nothing duplicated.

    <output>.parts/
        manifest.json                          what the job computes: input, model, task, blocks
        policy.json                            the engine placement, pinned at the first block
        part-000012-<input>-<file>.parquet     block 12: its rows and results
        joined.parquet                         every block in order; once here, parts are spare

Every file is written under a temporary name, fsynced, renamed, and its directory fsynced: a
killed run leaves whole files or none (temporaries are removed on resume). A part's name carries
16 hex digits of the sha256 of its input block's values and of the file itself; on
resume a part is kept only when both still match, otherwise it is recomputed (truncated,
corrupt, or from rows that have changed place). Commit: the joined file is renamed in, the rest
of the directory is deleted, the joined file is renamed to the output and the empty directory
removed. So the output never exists beside parts; it carries the manifest and its blocks' rows
digests in its Parquet metadata, so that a resume of a finished job knows it is finished (and
whether the input's rows are still those it was computed from).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flexgen_wrangle.errors import WrangleError

logger = logging.getLogger(__name__)

MANIFEST, POLICY, JOINED = "manifest.json", "policy.json", "joined.parquet"
MANIFEST_KEY = b"flexgen_wrangle.job"  # the output's Parquet metadata: the job's manifest,
BLOCKS_KEY = b"flexgen_wrangle.blocks"  # and the rows digest of each of its blocks
_PART = re.compile(r"part-(\d{6})-([0-9a-f]{16})-([0-9a-f]{16})\.parquet")
_SHOWN_CHARS = 120  # of a differing value, in a refusal


class ResumeError(WrangleError, ValueError):
    """--resume found the parts (or the output) of a different job."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def rows_digest(batch: pa.RecordBatch) -> str:
    """Of the rows' values and the column names and types: not of the buffers, whose slicing and
    NULL slots differ from one read of the same input to the next."""
    values = json.dumps([str(batch.schema.remove_metadata()), batch.to_pylist()], default=str)
    return digest(values.encode())


def fsync_dir(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError (a full disk, a file size limit) says which file it was writing."""
    try:
        yield
    except OSError as err:
        raise OSError(err.errno, f"{err.strerror} (writing {path})") from err


def atomic_write(path: Path, write: Callable[[Path], None],
                 named: Callable[[bytes], str] | None = None) -> Path:
    """`write(temporary)`, fsync, rename to `path` (or to `named(the bytes written)` next to
    it): the file is whole or absent. Returns its path."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with writing(path):
            write(temporary)
            with temporary.open("rb") as handle:
                if named is not None:
                    path = path.with_name(named(handle.read()))
                os.fsync(handle.fileno())
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def differences(found: Any, wanted: Any, where: str = "") -> list[str]:
    """Where two manifests differ: "job.args.labels: ['a', 'b'] (then) -> ['a', 'c'] (now)"."""
    if isinstance(found, dict) and isinstance(wanted, dict):
        keys = list(dict.fromkeys([*found, *wanted]))
        return [line for key in keys for line in
                differences(found.get(key), wanted.get(key), f"{where}.{key}" if where else key)]
    if found == wanted:
        return []
    return [f"{where or 'manifest'}: {_shown(found)} (then) -> {_shown(wanted)} (now)"]


def _shown(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def written_by(path: Path) -> tuple[dict | None, list[str]]:
    """The job manifest and block digests in an output's metadata (None: unreadable, or not
    ours)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        if MANIFEST_KEY not in metadata:
            return None, []
        return json.loads(metadata[MANIFEST_KEY]), json.loads(metadata.get(BLOCKS_KEY, b"[]"))
    except (pa.ArrowException, OSError, ValueError):
        return None, []


class PartsDir:
    def __init__(self, output: Path, manifest: dict[str, Any]) -> None:
        self.output, self.manifest = output, manifest
        self.path = output.with_name(output.name + ".parts")
        self._parts: dict[int, Path] = {}
        self.done_blocks: list[str] = []  # "joined" / "finished": the output's block digests

    def start(self, resume: bool) -> str:
        """"fresh" (no earlier work: a stale output is removed), "resumed" (parts kept),
        "joined" (only the commit is left) or "finished" (the output is this job's)."""
        state = self._resumable() if resume else None
        if state is not None:
            return state
        shutil.rmtree(self.path, ignore_errors=True)
        self.output.unlink(missing_ok=True)  # a stale output must not pass for this job's
        self.path.mkdir(parents=True)
        atomic_write(self.path / MANIFEST,
                     lambda tmp: tmp.write_text(json.dumps(self.manifest, indent=1)))
        return "fresh"

    def _resumable(self) -> str | None:
        """What --resume keeps (None: nothing, or nothing readable); another job's: refused."""
        joined = self.path / JOINED
        if joined.is_file():
            found, self.done_blocks = written_by(joined)
            if self._check(found, "joined output"):
                return "joined"
            joined.unlink()  # unreadable: start from the parts, if they are still there
        if (self.path / MANIFEST).is_file() and self._check(self._read_manifest(), "parts"):
            self._scan()
            return "resumed"
        if self.output.is_file() and not self._has_work():
            found, self.done_blocks = written_by(self.output)
            self._check(found, "output", missing_ok=False)
            shutil.rmtree(self.path, ignore_errors=True)  # an empty leftover directory
            return "finished"
        return None

    def _has_work(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def _read_manifest(self) -> dict | None:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def _check(self, found: dict | None, what: str, missing_ok: bool = True) -> bool:
        """True: `found` is this job's manifest. None: unreadable (start over, or refuse)."""
        if found is None:
            if missing_ok:
                logger.warning("%s: the %s cannot be read; starting over", self.path, what)
                return False
            raise ResumeError(f"cannot resume: {self.output} exists but was not written by "
                              "`flexgen-wrangle run`; run without --resume to replace it")
        lines = differences(found, self.manifest)
        if lines:
            where = self.output if what == "output" else self.path
            raise ResumeError(f"cannot resume: {where} holds the {what} of a different job; "
                              f"what differs: {'; '.join(lines)}. Run without --resume to "
                              "start over")
        return True

    def _scan(self) -> None:
        for entry in sorted(self.path.iterdir()):
            match = _PART.fullmatch(entry.name)
            if entry.name.startswith("."):
                entry.unlink()  # the temporary of a killed write
            elif match and int(match.group(1)) not in self._parts:
                self._parts[int(match.group(1))] = entry

    # policy ------------------------------------------------------------------------------
    def pinned_policy(self) -> dict | None:
        path = self.path / POLICY
        return json.loads(path.read_text()) if path.is_file() else None

    def pin_policy(self, policy: dict) -> None:
        atomic_write(self.path / POLICY, lambda tmp: tmp.write_text(json.dumps(policy)))

    # parts -------------------------------------------------------------------------------
    def kept(self, block_idx: int, rows: str) -> bool:
        """Whether a sound part of the block whose `rows_digest` is `rows` is there (a damaged
        or stale one is removed)."""
        path = self._parts.get(block_idx)
        if path is None:
            return False
        match = _PART.fullmatch(path.name)
        if match.group(2) == rows and match.group(3) == digest(path.read_bytes()):
            return True
        logger.warning("%s is damaged or holds other rows: recomputing block %d", path, block_idx)
        path.unlink()
        del self._parts[block_idx]
        return False

    def write(self, block_idx: int, rows: str, result: pa.RecordBatch) -> None:
        """`result` (the output rows of the block whose `rows_digest` is `rows`) as its part."""
        stem = f"part-{block_idx:06d}"
        self._parts[block_idx] = atomic_write(
            self.path / stem, lambda tmp: pq.write_table(pa.Table.from_batches([result]), tmp),
            named=lambda data: f"{stem}-{rows}-{digest(data)}.parquet")

    def join(self, schema: pa.Schema, blocks: list[str]) -> None:
        """The blocks (their rows digests), in order, as the joined output; its metadata holds
        the manifest and the digests."""
        metadata = {**(schema.metadata or {}), MANIFEST_KEY: json.dumps(self.manifest),
                    BLOCKS_KEY: json.dumps(blocks)}

        def write(temporary: Path) -> None:
            with pq.ParquetWriter(temporary, schema.with_metadata(metadata)) as writer:
                for block_idx in range(len(blocks)):
                    writer.write_table(pq.read_table(self._parts[block_idx], schema=schema))

        atomic_write(self.path / JOINED, write)

    def commit(self) -> None:
        """The joined file becomes the output; the directory goes."""
        for entry in self.path.iterdir():
            if entry.name != JOINED:
                entry.unlink()
        os.replace(self.path / JOINED, self.output)
        fsync_dir(self.output.parent)
        self.path.rmdir()
