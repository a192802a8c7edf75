"""Seeded tiny random checkpoints, built locally with transformers (never from a hub)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
)

VOCAB = 96
EOS = 2

_CONFIGS = {
    "opt": lambda: OPTConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, eos_token_id=EOS, pad_token_id=1,
        bos_token_id=0,
    ),
    # opt-350m's shape: post-norm layers and a projected embedding width
    "opt350": lambda: OPTConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=16, do_layer_norm_before=False,
        eos_token_id=EOS, pad_token_id=1, bos_token_id=0,
    ),
    "llama": lambda: LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        eos_token_id=EOS, bos_token_id=0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    ),
    "llama_tied": lambda: LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        eos_token_id=EOS, bos_token_id=0, tie_word_embeddings=True,
    ),
    "qwen2": lambda: Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        eos_token_id=EOS, bos_token_id=0, tie_word_embeddings=True,
    ),
    "mistral": lambda: MistralConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
        eos_token_id=EOS, bos_token_id=0, sliding_window=8,
    ),
}

FAMILIES = tuple(_CONFIGS)


def build_model(
    out_dir: Path, family: str, seed: int = 0, dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None, safe: bool = True,
) -> Path:
    """Save a seeded random model of `family` to `out_dir`; returns the directory."""
    torch.manual_seed(seed)
    config = _CONFIGS[family]()
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    with torch.no_grad():  # widen the random init so that greedy choices are well separated
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    if not safe:
        to_torch_bin(Path(out_dir))
    return Path(out_dir)


def to_torch_bin(model_dir: Path) -> None:
    """Rewrite a safetensors checkpoint as PyTorch `.bin` files (same sharding), as older HF
    checkpoints are stored; transformers 5 no longer writes them itself."""
    from safetensors.torch import load_file

    index_path = model_dir / "model.safetensors.index.json"
    if not index_path.exists():
        torch.save(load_file(model_dir / "model.safetensors"), model_dir / "pytorch_model.bin")
        (model_dir / "model.safetensors").unlink()
        return
    index = json.loads(index_path.read_text())
    renamed = {}
    for shard in sorted(set(index["weight_map"].values())):
        new_name = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save(load_file(model_dir / shard), model_dir / new_name)
        (model_dir / shard).unlink()
        renamed[shard] = new_name
    index["weight_map"] = {key: renamed[file] for key, file in index["weight_map"].items()}
    (model_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    index_path.unlink()


def hf_greedy(
    model_dir: Path, prompt: list[int], max_new: int, stop_id: int | None = None
) -> list[int]:
    """HF transformers' greedy generate for one prompt: the reference. `stop_id` replaces EOS."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    kwargs = {} if stop_id is None else {"eos_token_id": stop_id}
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                         do_sample=False, pad_token_id=1, **kwargs)
    return out[0, len(prompt):].tolist()
