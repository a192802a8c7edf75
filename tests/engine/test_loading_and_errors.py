"""Checkpoint formats, and bad input that must fail early with a message naming the problem."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine import Engine, Placement, Policy, SamplingParams
from engine.checkpoint import CheckpointError
from tests.models import build_model, hf_greedy

POLICY = Policy(2, 2, Placement(40, 30, 30), Placement.on("host"), Placement.on("device"))
PROMPTS = [[3, 4, 5], [6, 7, 8, 9, 10]]


@pytest.mark.parametrize(
    ("family", "shard", "safe"),
    [("llama", "20KB", True), ("opt350", None, False), ("qwen2", "20KB", False)],
)
def test_sharded_and_bin_checkpoints_load(tmp_path, family, shard, safe):
    model_dir = build_model(tmp_path / family, family, max_shard_size=shard, safe=safe)
    index = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    assert (model_dir / index).exists() == bool(shard)
    expected = [hf_greedy(model_dir, p, 5) for p in PROMPTS]
    with Engine.from_pretrained(model_dir, policy=POLICY, dtype=torch.float32) as eng:
        assert eng.generate(PROMPTS, SamplingParams(max_new_tokens=5)) == expected


@pytest.fixture
def engine(model_dirs):
    with Engine.from_pretrained(model_dirs("opt"), policy=POLICY, dtype=torch.float32) as eng:
        yield eng


def test_empty_prompt_list_gives_empty_result(engine):
    assert engine.generate([]) == []


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ([[3, 4], []], "row 1 is empty"),
        ([[3, 4], [5, 999]], "row 1 has token id 999 outside the vocabulary"),
        ([[3, -1]], "row 0 has token id -1"),
        ([[3, 4], list(range(3, 3)) or [5] * 70], "row 1 has 70 tokens"),
    ],
)
def test_bad_prompts_name_the_row(engine, prompts, message):
    with pytest.raises(ValueError, match=message):
        engine.generate(prompts, SamplingParams(max_new_tokens=4))


def test_prompt_plus_generation_beyond_positions(engine):
    with pytest.raises(ValueError, match="row 0 has 60 tokens"):
        engine.generate([[5] * 60], SamplingParams(max_new_tokens=10))


def test_prompts_must_be_token_lists(engine):
    with pytest.raises(TypeError, match="row 0"):
        engine.generate(["hello"])


def test_unknown_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(ValueError, match="OPTForCausalLM.*LlamaForCausalLM"):
        Engine.from_pretrained(tmp_path)


def test_missing_weights_name_the_directory(model_dirs, tmp_path):
    shutil.copy(model_dirs("opt") / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no weights in"):
        Engine.from_pretrained(tmp_path, policy=POLICY)


def test_missing_shard_named(tmp_path):
    model_dir = build_model(tmp_path / "m", "llama", max_shard_size="20KB")
    shard = sorted(model_dir.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        Engine.from_pretrained(model_dir, policy=POLICY)


def test_corrupt_weight_file_named(model_dirs, tmp_path):
    shutil.copytree(model_dirs("opt"), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Engine.from_pretrained(tmp_path / "m", policy=POLICY)


def test_placement_must_sum_to_100():
    with pytest.raises(ValueError, match="sum to 100"):
        Placement(50, 30, 10)


def test_unwritable_offload_dir_is_a_clear_error(model_dirs, tmp_path):
    (tmp_path / "a-file").write_text("")  # a directory cannot be made under a file, even by root
    target = tmp_path / "a-file" / "offload"
    with pytest.raises(OSError, match="offload directory"):
        Engine.from_pretrained(model_dirs("opt"), policy=POLICY, offload_dir=target)


def test_full_disk_removes_partial_files(tmp_path, monkeypatch):
    from engine.storage import disk

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk.os, "pwrite", no_space)
    path = tmp_path / "t.bin"
    with pytest.raises(OSError, match="disk is full"):
        disk.write_file(path, torch.ones(10))
    assert not path.exists()


def test_unknown_memory_tier_and_bad_sizes(model_dirs):
    with pytest.raises(ValueError, match="unknown memory tier"):
        Engine.from_pretrained(model_dirs("opt"), policy=POLICY, memory={"gpu": "1GiB"})
    with pytest.raises(ValueError, match="cannot read memory size"):
        Engine.from_pretrained(model_dirs("opt"), policy=POLICY, memory={"device": "lots"})
