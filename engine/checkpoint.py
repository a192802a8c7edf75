"""Reading tensors from a local HF checkpoint directory, one tensor at a time.

Formats: `model.safetensors`, sharded safetensors with `model.safetensors.index.json`,
`pytorch_model.bin`, and sharded `.bin` with `pytorch_model.bin.index.json`. Keys may carry a
`model.` prefix (as `*ForCausalLM` saves them) or not (as base models save them).

A safetensors file is opened afresh for each tensor: its reader memory-maps the whole file, and
the pages of every tensor read stay resident in that mapping until it closes, so one long-lived
handle would hold the whole checkpoint in the process's RSS by the end of loading (a model
larger than memory could not be loaded at all). Reopening costs one header parse per tensor.

Hostile files are refused at construction, before any tensor is read, each error naming the
file: a safetensors header that lies about its byte ranges (`engine.safetensors_header`), an
index that names a missing shard (or a path outside the model directory), a `.bin` whose pickle
holds code (loaded weights-only: torch's restricted unpickler refuses any global that is not a
tensor type, so the code never runs).
"""

from __future__ import annotations

import json
import pickle
import re
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.safetensors_header import HeaderError, read_header

_SINGLE = ("model.safetensors", "pytorch_model.bin")
_INDEXED = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_PREFIXES = ("model.", "")


class CheckpointError(ValueError):
    """A weight file is missing, corrupt, or lacks a tensor the model needs."""


class CheckpointReader:
    """Maps tensor names to files and reads them lazily; close() releases open files."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self._file_of = _tensor_files(self.model_dir)  # key -> file name
        self._stack = ExitStack()
        self._open: dict[str, object] = {}

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._open.clear()

    def resolve(self, name: str) -> str | None:
        """The stored key for `name`, trying the `model.` prefix; None when absent."""
        for prefix in _PREFIXES:
            if prefix + name in self._file_of:
                return prefix + name
        return None

    def read(self, name: str) -> torch.Tensor:
        key = self.resolve(name)
        if key is None:
            raise CheckpointError(f"tensor {name!r} not found in the checkpoint at {self.model_dir}")
        file_name = self._file_of[key]
        try:
            if file_name.endswith(".safetensors"):
                with safe_open(str(self._path(file_name)), framework="pt") as handle:
                    return handle.get_tensor(key)
            return self._handle(file_name).get_tensor(key)
        except (SafetensorError, RuntimeError, OSError, KeyError) as err:
            raise CheckpointError(f"cannot read {key!r} from {self.model_dir / file_name}: {err}") from err

    def _path(self, file_name: str) -> Path:
        path = self.model_dir / file_name
        if not path.is_file():
            raise CheckpointError(f"weight file {path} is missing (named by the checkpoint index)")
        return path

    def _handle(self, file_name: str):  # -> object with get_tensor(key)
        if file_name not in self._open:
            self._open[file_name] = _open_file(self._path(file_name), self._stack)
        return self._open[file_name]


class _TorchBinFile:
    """A `.bin` state dict, memory-mapped so that only the tensors read are paged in (a file in
    the legacy, pre-zip format cannot be mapped: it is read whole). Always weights-only."""

    def __init__(self, path: Path) -> None:
        try:
            self.state = _load_weights_only(path, mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
            self.state = _load_weights_only(path, mmap=False)
        if not isinstance(self.state, dict):
            raise CheckpointError(f"weight file {path} holds a {type(self.state).__name__}, "
                                  "not a state dict of tensors")

    def get_tensor(self, key: str) -> torch.Tensor:
        return self.state[key]


def _load_weights_only(path: Path, mmap: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"a call to {found.group(1)}" if found else "instructions beyond tensors"
        raise CheckpointError(
            f"refused {path}: its pickle holds {what}; a weight file may hold only tensors. "
            "It is loaded weights-only, so its code never runs; use a safetensors copy of the "
            "checkpoint from a source you trust") from None


def _open_file(path: Path, stack: ExitStack) -> object:
    try:
        if path.suffix == ".safetensors":
            return stack.enter_context(safe_open(str(path), framework="pt"))
        return _TorchBinFile(path)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"weight file {path} is corrupt or unreadable: {err}") from err


def _tensor_files(model_dir: Path) -> dict[str, str]:
    for index_name in _INDEXED:
        index_path = model_dir / index_name
        if index_path.is_file():
            weight_map = _read_index(index_path)
            _check_shards(index_path, weight_map)
            return weight_map
    for file_name in _SINGLE:
        path = model_dir / file_name
        if path.is_file():
            keys = _keys_of(path)
            return dict.fromkeys(keys, file_name)
    raise CheckpointError(
        f"no weights in {model_dir}: expected one of {', '.join(_SINGLE + _INDEXED)}"
    )


def _read_index(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint index {index_path} is corrupt: {err!r}") from None
    if not isinstance(weight_map, dict) or not all(
            isinstance(key, str) and isinstance(name, str) for key, name in weight_map.items()):
        raise CheckpointError(f"checkpoint index {index_path}: weight_map must map tensor "
                              "names to file names")
    for name in set(weight_map.values()):
        if Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"checkpoint index {index_path} names {name!r}, which is not "
                                  "a file name in the model directory; refused")
    return weight_map


def _check_shards(index_path: Path, weight_map: dict[str, str]) -> None:
    """Every shard the index names exists (and a safetensors shard holds the tensors the index
    puts in it), before any tensor is read."""
    by_file: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        by_file.setdefault(name, []).append(key)
    for name, keys in sorted(by_file.items()):
        path = index_path.parent / name
        if not path.is_file():
            raise CheckpointError(
                f"weight file {path} is missing: the index {index_path.name} puts "
                f"{len(keys)} tensor(s) in it (e.g. {keys[0]!r}); fetch that shard again")
        if path.suffix == ".safetensors":
            stored = set(_keys_of(path))
            absent = [key for key in keys if key not in stored]
            if absent:
                raise CheckpointError(
                    f"the index {index_path} puts {len(absent)} tensor(s) in {path} that it "
                    f"does not hold (e.g. {absent[0]!r}): the index and the shards disagree")


def stored_values(model_dir: Path) -> tuple[int | None, int]:
    """(tensor values in the weight files, or None when a `.bin` file's are unknown without
    loading it; bytes of the weight files). (0, 0) when the directory has no weights."""
    try:
        files = sorted(set(_tensor_files(model_dir).values()))
    except CheckpointError as err:
        if str(err).startswith("no weights in"):
            return 0, 0
        raise
    values: int | None = 0
    for name in files:
        path = model_dir / name
        if path.suffix == ".safetensors" and values is not None:
            values += sum(entry.numel for entry in _header(path))
        else:
            values = None
    return values, sum((model_dir / name).stat().st_size for name in files)


def _header(path: Path):
    try:
        return read_header(path)
    except HeaderError as err:
        raise CheckpointError(f"weight file {path} is refused: {err}") from None
    except OSError as err:
        raise CheckpointError(f"weight file {path} cannot be read: {err.strerror}") from None


def _keys_of(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        return [entry.name for entry in _header(path)]
    with ExitStack() as stack:
        handle = _open_file(path, stack)
        if isinstance(handle, _TorchBinFile):
            return list(handle.state)
        return list(handle.keys())
