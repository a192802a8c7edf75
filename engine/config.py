"""`ModelConfig`: the few numbers the engine's math needs, read from an HF `config.json`.

Two families: OPT (learned positions, LayerNorm, ReLU MLP, optional post-norm and projection of
the embedding width) and Llama (rotary positions, RMSNorm, gated SiLU MLP, grouped-query
attention); Mistral and Qwen2 are Llama-family with small differences (sliding window, q/k/v bias).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

SUPPORTED_ARCHITECTURES = {
    "OPTForCausalLM": "opt",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
}
_MODEL_TYPES = {"opt": "opt", "llama": "llama", "mistral": "llama", "qwen2": "llama"}


@dataclass(frozen=True)
class ModelConfig:
    family: str  # "opt" | "llama"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    norm_eps: float
    activation: str  # "relu" | "gelu" | "silu"
    pre_norm: bool = True  # OPT-350m puts LayerNorm after the residual add
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    embed_dim: int = 0  # OPT's word_embed_proj_dim; == hidden_size when there is no projection
    final_norm: bool = True
    tie_word_embeddings: bool = True
    rope_inv_freq: tuple[float, ...] = ()  # Llama family: rotary inverse frequencies [head_dim/2]
    rope_scaling_factor: float = 1.0  # multiplies cos/sin (yarn-style attention scaling)
    sliding_window: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    torch_dtype: torch.dtype | None = None  # the checkpoint's dtype, when it says

    @property
    def has_projection(self) -> bool:
        return self.embed_dim != self.hidden_size

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in {model_dir}: not an HF checkpoint directory")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        family = _family_of(raw)
        return _opt_config(raw) if family == "opt" else _llama_config(raw)


def _family_of(raw: dict) -> str:
    for arch in raw.get("architectures") or []:
        if arch in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[arch]
    if raw.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[raw["model_type"]]
    found = raw.get("architectures") or raw.get("model_type")
    raise ValueError(
        f"unsupported architecture {found!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _eos_ids(raw: dict) -> tuple[int, ...]:
    eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def _dtype(raw: dict) -> torch.dtype | None:
    name = raw.get("torch_dtype") or raw.get("dtype")
    return getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else None


def _opt_config(raw: dict) -> ModelConfig:
    hidden = raw["hidden_size"]
    pre_norm = raw.get("do_layer_norm_before", True)
    return ModelConfig(
        family="opt",
        vocab_size=raw["vocab_size"],
        hidden_size=hidden,
        num_layers=raw["num_hidden_layers"],
        num_heads=raw["num_attention_heads"],
        num_kv_heads=raw["num_attention_heads"],
        head_dim=hidden // raw["num_attention_heads"],
        intermediate_size=raw["ffn_dim"],
        max_positions=raw["max_position_embeddings"],
        norm_eps=1e-5,
        activation=raw.get("activation_function", "relu"),
        pre_norm=pre_norm,
        qkv_bias=raw.get("enable_bias", True),
        out_bias=raw.get("enable_bias", True),
        mlp_bias=raw.get("enable_bias", True),
        embed_dim=raw.get("word_embed_proj_dim") or hidden,
        final_norm=pre_norm and not raw.get("_remove_final_layer_norm", False),
        tie_word_embeddings=raw.get("tie_word_embeddings", True),
        eos_token_ids=_eos_ids(raw),
        pad_token_id=raw.get("pad_token_id"),
        torch_dtype=_dtype(raw),
    )


def _llama_config(raw: dict) -> ModelConfig:
    heads = raw["num_attention_heads"]
    head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
    inv_freq, scaling = _rope(raw)
    model_type = raw.get("model_type", "llama")
    use_window = model_type == "mistral" or raw.get("use_sliding_window", False)
    return ModelConfig(
        family="llama",
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=raw["intermediate_size"],
        max_positions=raw.get("max_position_embeddings", 2048),
        norm_eps=raw.get("rms_norm_eps", 1e-6),
        activation=raw.get("hidden_act", "silu"),
        qkv_bias=raw.get("attention_bias", model_type == "qwen2"),
        out_bias=raw.get("attention_bias", False),
        mlp_bias=raw.get("mlp_bias", False),
        embed_dim=raw["hidden_size"],
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        rope_inv_freq=tuple(inv_freq.tolist()),
        rope_scaling_factor=scaling,
        sliding_window=raw.get("sliding_window") if use_window else None,
        eos_token_ids=_eos_ids(raw),
        pad_token_id=raw.get("pad_token_id"),
        torch_dtype=_dtype(raw),
    )


def _rope(raw: dict) -> tuple[torch.Tensor, float]:
    """Rotary inverse frequencies, computed by transformers' own rope functions so that every
    scaling type it knows (linear, llama3, yarn, ...) matches HF exactly."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = AutoConfig.for_model(**raw)
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type in ("dynamic",):
        raise ValueError(f"rope type {rope_type!r} depends on the sequence length; unsupported")
    if rope_type == "default":
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
        dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
        return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    return ROPE_INIT_FUNCTIONS[rope_type](hf_config)
