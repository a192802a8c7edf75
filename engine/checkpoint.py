"""Reading tensors from a local HF checkpoint directory, one tensor at a time.

Formats: `model.safetensors`, sharded safetensors with `model.safetensors.index.json`,
`pytorch_model.bin`, and sharded `.bin` with `pytorch_model.bin.index.json`. Keys may carry a
`model.` prefix (as `*ForCausalLM` saves them) or not (as base models save them).

A safetensors file is opened afresh for each tensor: its reader memory-maps the whole file, and
the pages of every tensor read stay resident in that mapping until it closes, so one long-lived
handle would hold the whole checkpoint in the process's RSS by the end of loading (a model
larger than memory could not be loaded at all). Reopening costs one header parse per tensor.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

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
    """A `.bin` state dict, memory-mapped so that only the tensors read are paged in."""

    def __init__(self, path: Path) -> None:
        self.state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)

    def get_tensor(self, key: str) -> torch.Tensor:
        return self.state[key]


def _open_file(path: Path, stack: ExitStack) -> object:
    try:
        if path.suffix == ".safetensors":
            return stack.enter_context(safe_open(str(path), framework="pt"))
        return _TorchBinFile(path)
    except Exception as err:
        raise CheckpointError(f"weight file {path} is corrupt or unreadable: {err}") from err


def _tensor_files(model_dir: Path) -> dict[str, str]:
    for index_name in _INDEXED:
        index_path = model_dir / index_name
        if index_path.is_file():
            try:
                return dict(json.loads(index_path.read_text())["weight_map"])
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"checkpoint index {index_path} is corrupt: {err}") from err
    for file_name in _SINGLE:
        path = model_dir / file_name
        if path.is_file():
            keys = _keys_of(path)
            return dict.fromkeys(keys, file_name)
    raise CheckpointError(
        f"no weights in {model_dir}: expected one of {', '.join(_SINGLE + _INDEXED)}"
    )


def _keys_of(path: Path) -> list[str]:
    with ExitStack() as stack:
        handle = _open_file(path, stack)
        if isinstance(handle, _TorchBinFile):
            return list(handle.state)
        return list(handle.keys())
