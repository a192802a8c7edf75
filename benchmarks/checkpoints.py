"""Seeded random-weight checkpoints of real model shapes, built locally (never downloaded).

A checkpoint is a plain HF directory (config.json, generation_config.json, safetensors shards
and their index) that `from_pretrained` loads without missing keys. The model is built on the
meta device and each tensor is filled and written shard by shard in bf16, so building an
OPT-6.7B shape never holds the model in fp32 (peak memory is about one shard).

    python -m benchmarks.checkpoints opt-1.3b        # -> benchmarks/.cache/models/opt-1.3b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    Qwen2Config,
)

from benchmarks import CACHE_DIR

MODELS_DIR = CACHE_DIR / "models"
COMPLETE_MARKER = ".complete"  # written last: a directory without it is a broken build
SHARD_BYTES = 2 * 1024**3  # like save_pretrained's default shard size; bounds peak memory
INIT_STD = 0.02  # HF's initializer_range / init_std for these families

_OPT = dict(vocab_size=50272, max_position_embeddings=2048, activation_function="relu")
_LLAMA_1B = dict(  # Llama-3.2-1B's shape: GQA (32 query heads over 8 KV heads), tied head
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    bos_token_id=1,
    eos_token_id=2,
)
_QWEN2_05B = dict(  # Qwen2-0.5B's shape: 14 query heads over 2 KV heads, q/k/v bias, tied head
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    bos_token_id=1,
    eos_token_id=2,
)
_TINY = dict(vocab_size=1000, hidden_size=64, num_attention_heads=4, num_hidden_layers=2)

# name -> (config class, kwargs). Token ids 0..3 are specials; prompts never use them, and
# peers decode with min_new_tokens == max_new_tokens (ours with ignore_eos), so no run stops
# early at the EOS id.
PRESETS: dict[str, tuple[type[PretrainedConfig], dict]] = {
    "opt-125m": (OPTConfig, {**_OPT, "hidden_size": 768, "num_hidden_layers": 12,
                             "ffn_dim": 3072, "num_attention_heads": 12}),
    "opt-350m": (OPTConfig, {**_OPT, "hidden_size": 1024, "num_hidden_layers": 24,
                             "ffn_dim": 4096, "num_attention_heads": 16,
                             "do_layer_norm_before": False, "word_embed_proj_dim": 512}),
    "opt-1.3b": (OPTConfig, {**_OPT, "hidden_size": 2048, "num_hidden_layers": 24,
                             "ffn_dim": 8192, "num_attention_heads": 32}),
    "opt-6.7b": (OPTConfig, {**_OPT, "hidden_size": 4096, "num_hidden_layers": 32,
                             "ffn_dim": 16384, "num_attention_heads": 32}),
    "llama-1b-gqa": (LlamaConfig, _LLAMA_1B),
    "qwen2-0.5b": (Qwen2Config, _QWEN2_05B),
    # tiny shapes for tests and smoke runs
    "tiny-opt": (OPTConfig, {**_OPT, **_TINY, "ffn_dim": 128, "max_position_embeddings": 512}),
    "tiny-llama": (LlamaConfig, {**_TINY, "intermediate_size": 128, "num_key_value_heads": 2,
                                 "max_position_embeddings": 512, "bos_token_id": 1,
                                 "eos_token_id": 2}),
}


def preset_config(name: str) -> PretrainedConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
    config_cls, kwargs = PRESETS[name]
    config = config_cls(**kwargs)
    config.architectures = [f"{config_cls.__name__.removesuffix('Config')}ForCausalLM"]
    config.dtype = torch.bfloat16
    return config


def checkpoint_dir(name: str, root: Path = MODELS_DIR) -> Path:
    return Path(root) / name


def is_built(model_dir: Path) -> bool:
    return (Path(model_dir) / COMPLETE_MARKER).exists()


def ensure_checkpoint(name: str, root: Path = MODELS_DIR, seed: int = 0) -> Path:
    """Build the preset once into root/name (skipped when already complete); return the dir."""
    out = checkpoint_dir(name, root)
    if not is_built(out):
        build_checkpoint(preset_config(name), out, seed=seed)
    return out


def build_checkpoint(
    config: PretrainedConfig, out_dir: Path, seed: int = 0, shard_bytes: int = SHARD_BYTES
) -> Path:
    """Write a seeded random bf16 checkpoint of `config` to out_dir (atomically via a tmp dir)."""
    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    config.save_pretrained(tmp_dir)
    GenerationConfig.from_model_config(config).save_pretrained(tmp_dir)
    specs = tensor_specs(config)
    _write_shards(specs, tmp_dir, seed, shard_bytes)
    (tmp_dir / COMPLETE_MARKER).write_text(json.dumps({"seed": seed}) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_dir.rename(out_dir)
    return out_dir


def tensor_specs(config: PretrainedConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of every tensor a checkpoint stores (tied copies left out)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    state = model.state_dict()
    return {
        name: (tuple(tensor.shape), tensor.dtype)
        for name, tensor in state.items()
        if name not in tied
    }


def _shard_plan(
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]], shard_bytes: int
) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    filled = 0
    for name, (shape, dtype) in specs.items():
        nbytes = _numel(shape) * dtype.itemsize
        if shards[-1] and filled + nbytes > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += nbytes
    return shards


def _write_shards(
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
    out_dir: Path,
    seed: int,
    shard_bytes: int,
) -> None:
    plan = _shard_plan(specs, shard_bytes)
    if len(plan) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    weight_map: dict[str, str] = {}
    total_bytes = 0
    for file_name, tensor_names in zip(names, plan, strict=True):
        shard = {name: random_tensor(name, *specs[name], seed=seed) for name in tensor_names}
        total_bytes += sum(t.numel() * t.element_size() for t in shard.values())
        save_file(shard, str(out_dir / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensor_names, file_name))
        del shard
    if len(plan) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def random_tensor(
    name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0
) -> torch.Tensor:
    """HF-style init, seeded per tensor name (independent of build order): norms 1, biases 0,
    everything else N(0, 0.02)."""
    parts = name.split(".")
    if parts[-1] == "bias":
        return torch.zeros(shape, dtype=dtype)
    if len(parts) > 1 and "norm" in parts[-2]:
        return torch.ones(shape, dtype=dtype)
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    out = torch.empty(shape, dtype=dtype)
    return out.normal_(0.0, INIT_STD, generator=generator)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+", choices=sorted(PRESETS))
    parser.add_argument("--root", type=Path, default=MODELS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in args.presets:
        print(ensure_checkpoint(name, args.root, seed=args.seed))


if __name__ == "__main__":
    main()
