"""Hostile checkpoints (issue 16): a `.bin` pickle that holds code, a config.json with absurd
sizes, a safetensors header that lies about its byte ranges, an index naming a missing shard.
Each is refused before any weight is placed, the error naming the file (and field / tensor)."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch

from engine import Engine, Placement, Policy
from engine.checkpoint import CheckpointError, CheckpointReader
from engine.config import ConfigSizeError, ModelConfig
from engine.safetensors_header import HeaderError, read_header
from tests.models import build_model

POLICY = Policy(2, 1, Placement(100, 0, 0), Placement.on("device"), Placement.on("device"))


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("hostile_src"), "llama")


@pytest.fixture
def model_dir(source_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source_dir, tmp_path / "model"))


class WritesAFile:
    """Unpickling this calls builtins.open(path, "w"): code that creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def _as_bin(model_dir: Path, state: object, legacy: bool = False) -> Path:
    (model_dir / "model.safetensors").unlink()
    path = model_dir / "pytorch_model.bin"
    if legacy == "raw":
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, "raw"])
def test_a_pickle_with_code_is_refused_and_never_runs(model_dir, tmp_path, legacy):
    marker = tmp_path / "created-by-the-pickle"
    path = _as_bin(model_dir, {"embed_tokens.weight": WritesAFile(marker)}, legacy)
    with pytest.raises(CheckpointError, match="refused .*pytorch_model.bin.*only tensors"):
        Engine.from_pretrained(model_dir, policy=POLICY, dtype=torch.float32)
    assert not marker.exists()
    if not legacy:  # the payload is real: a plain torch.load runs it
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_a_legacy_bin_of_tensors_still_loads(model_dir, source_dir):
    with CheckpointReader(source_dir) as reader:
        state = {key: reader.read(key) for key in reader._file_of}
    _as_bin(model_dir, state, legacy=True)
    with CheckpointReader(model_dir) as reader:
        assert torch.equal(reader.read("embed_tokens.weight"), state["model.embed_tokens.weight"])


def _edit_config(model_dir: Path, **changes: object) -> None:
    path = model_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(("key", "value"), [
    ("hidden_size", 10**6), ("num_hidden_layers", 100_000), ("vocab_size", 10**10),
    ("max_position_embeddings", 10**12), ("num_attention_heads", 0), ("intermediate_size", -5),
    ("num_key_value_heads", "2"), ("head_dim", 2.5),
])
def test_absurd_config_sizes_are_refused_by_name(model_dir, key, value):
    _edit_config(model_dir, **{key: value})
    began = time.perf_counter()
    with pytest.raises(ConfigSizeError, match=f"config.json: {key} is {value!r}; it must be"):
        Engine.from_pretrained(model_dir, dtype=torch.float32)
    assert time.perf_counter() - began < 2.0


def test_a_config_larger_than_its_weights_is_refused_before_allocating(model_dir, tmp_path):
    _edit_config(model_dir, vocab_size=1_000_000, num_hidden_layers=200)
    offload = tmp_path / "offload"
    with pytest.raises(ConfigSizeError, match=r"implies [\d,]+ weight values .* hold 34,016 values"):
        Engine.from_pretrained(model_dir, dtype=torch.float32, offload_dir=offload)
    assert not offload.exists() or not any(offload.iterdir())
    with pytest.raises(ConfigSizeError, match="does not describe these weights"):
        ModelConfig.from_pretrained(model_dir)  # also what fw.LLM reads at construction


def test_a_bin_checkpoint_is_compared_by_its_bytes(model_dir, source_dir):
    with CheckpointReader(source_dir) as reader:
        state = {key: reader.read(key) for key in reader._file_of}
    _as_bin(model_dir, state)
    ModelConfig.from_pretrained(model_dir)  # the real config passes
    _edit_config(model_dir, hidden_size=4096)
    with pytest.raises(ConfigSizeError, match="bytes, at least one per value"):
        ModelConfig.from_pretrained(model_dir)


def _rewrite_header(path: Path, edit, prefix: bytes | None = None, cut: int = 0) -> None:
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    text = json.dumps(edit(copy.deepcopy(header))).encode()
    body = raw[8 + length :]
    path.write_bytes((prefix or struct.pack("<Q", len(text))) + text + body[: len(body) - cut])


def _first(header: dict) -> dict:
    return header[sorted(key for key in header if key != "__metadata__")[0]]


def _set(field: str, value):
    def edit(header: dict) -> dict:
        _first(header)[field] = value
        return header
    return edit


def _overlap(header: dict) -> dict:
    entries = sorted((info["data_offsets"], name) for name, info in header.items()
                     if name != "__metadata__")
    second = header[entries[1][1]]
    begin, end = second["data_offsets"]
    second["data_offsets"] = [begin - 4, end - 4]
    return header


LIES = {
    "past the end": (_set("data_offsets", [0, 10**12]), None, 0, "data_offsets .* span"),
    "short range": (_set("shape", [1]), None, 0, r"shape \[1\] of F32 takes 4 bytes"),
    "overlap": (_overlap, None, 0, "overlaps tensor"),
    "negative size": (_set("shape", [-1, 32]), None, 0, "not a list of sizes"),
    "unknown dtype": (_set("dtype", "Q99"), None, 0, "unknown dtype 'Q99'"),
    "header length": (lambda header: header, struct.pack("<Q", 2**62), 0, "claims"),
    "truncated data": (lambda header: header, None, 100, "run past the end|cover"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_lying_safetensors_header_is_refused_naming_the_file(model_dir, lie):
    edit, prefix, cut, message = LIES[lie]
    path = model_dir / "model.safetensors"
    _rewrite_header(path, edit, prefix, cut)
    with pytest.raises(HeaderError, match=message):
        read_header(path)
    with pytest.raises(CheckpointError, match=f"{path}.* refused: .*({message})"):
        Engine.from_pretrained(model_dir, policy=POLICY, dtype=torch.float32)


def test_an_honest_header_reads_back_every_tensor(source_dir):
    entries = read_header(source_dir / "model.safetensors")
    with CheckpointReader(source_dir) as reader:
        for entry in entries:
            assert tuple(reader.read(entry.name).shape) == entry.shape


@pytest.fixture
def sharded_dir(tmp_path: Path) -> Path:
    return build_model(tmp_path / "sharded", "llama", max_shard_size="20KB")


def test_an_index_naming_a_missing_shard_names_both(sharded_dir):
    shard = sorted(sharded_dir.glob("model-*.safetensors"))[0]
    shard.unlink()
    pattern = f"weight file .*{shard.name} is missing: the index model.safetensors.index.json"
    with pytest.raises(CheckpointError, match=pattern):
        CheckpointReader(sharded_dir)
    with pytest.raises(CheckpointError, match=shard.name):  # before any weight is placed
        ModelConfig.from_pretrained(sharded_dir)


@pytest.mark.parametrize(("name", "message"), [
    ("../outside.safetensors", "not a file name in the model directory"),
    (None, "that it does not hold"),  # another shard of the checkpoint
])
def test_an_index_that_points_elsewhere_is_refused(sharded_dir, name, message):
    index_path = sharded_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    last = sorted(index["weight_map"])[-1]
    shards = sorted(set(index["weight_map"].values()))
    if name is None:  # a tensor moved to a shard that does not hold it
        name = next(shard for shard in shards if shard != index["weight_map"][last])
    index["weight_map"][last] = name
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"model.safetensors.index.json.*{message}"):
        CheckpointReader(sharded_dir)
