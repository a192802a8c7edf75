"""`ModelConfig`: the few numbers the engine's math needs, read from an HF `config.json`.

Two families: OPT (learned positions, LayerNorm, ReLU MLP, optional post-norm and projection of
the embedding width) and the rotary ("llama") family: rotary positions, RMSNorm, a gated MLP,
grouped-query attention. Within the rotary family the architectures differ by switches that
the layer math reads: Mistral and Qwen2 (sliding window, q/k/v bias), Qwen3 (per-head q/k
norms), Gemma 2 and 3 (scaled embeddings, (1 + w) norms around both sublayers, tanh GELU,
soft-capping, alternating sliding and global layers, Gemma 3's local rotary base), Phi-3 (fused
projections, LongRoPE, partial rotary). docs/models.md lists what was checked for each.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

# architecture -> variant (the switches below); every one of them is in the rotary family
# except OPT.
SUPPORTED_ARCHITECTURES = {
    "OPTForCausalLM": "opt",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
}
# config.json `model_type` -> variant, for checkpoints whose `architectures` is missing
_MODEL_TYPES = {
    "opt": "opt", "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
    "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3",
}
_HF_MODEL_TYPE = {variant: model_type for model_type, variant in _MODEL_TYPES.items()}
# Sizes a config.json may give: each a whole number from 1 to its bound, which is far above any
# released model (vocabularies ~256k, widths ~16k, 126 layers, contexts ~10M positions) and far
# below what would overflow a size computation or make a plan walk millions of layers.
SIZE_LIMITS = {
    "vocab_size": 1 << 24, "hidden_size": 1 << 17, "num_hidden_layers": 1 << 12,
    "num_attention_heads": 1 << 12, "num_key_value_heads": 1 << 12, "head_dim": 1 << 12,
    "intermediate_size": 1 << 20, "ffn_dim": 1 << 20, "word_embed_proj_dim": 1 << 17,
    "max_position_embeddings": 1 << 26,
}
# Close relatives that are refused with the reason, not just "unsupported".
_OUT_OF_SCOPE = {
    "Qwen3MoeForCausalLM": "Qwen3-MoE (mixture-of-experts) checkpoints are out of scope; "
                           "dense Qwen3ForCausalLM checkpoints are supported",
    "qwen3_moe": "Qwen3-MoE (mixture-of-experts) checkpoints are out of scope; dense "
                 "Qwen3ForCausalLM checkpoints are supported",
    "Gemma3ForConditionalGeneration": "multimodal Gemma 3 (image + text) checkpoints are out "
                                      "of scope; text-only Gemma3ForCausalLM ones are supported",
    "gemma3": "multimodal Gemma 3 (image + text) checkpoints are out of scope; text-only "
              "Gemma3ForCausalLM ones (model_type gemma3_text) are supported",
}


@dataclass(frozen=True)
class ModelConfig:
    family: str  # "opt" | "llama" (the rotary family: every architecture but OPT)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    norm_eps: float
    activation: str  # "relu" | "gelu" | "silu" | "gelu_pytorch_tanh" | ...
    pre_norm: bool = True  # OPT-350m puts LayerNorm after the residual add
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    embed_dim: int = 0  # OPT's word_embed_proj_dim; == hidden_size when there is no projection
    final_norm: bool = True
    tie_word_embeddings: bool = True
    rope_inv_freq: tuple[float, ...] = ()  # rotary inverse frequencies [rotary_dim / 2]
    rope_scaling_factor: float = 1.0  # multiplies cos/sin (yarn/longrope attention scaling)
    sliding_window: int | None = None  # the window of the layers that have one
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    torch_dtype: torch.dtype | None = None  # the checkpoint's dtype, when it says
    arch: str = ""  # the architecture it was read as, e.g. "Gemma2ForCausalLM"
    # per decoder layer: its sliding window, or None for global attention; () = every layer
    # uses `sliding_window`
    layer_windows: tuple[int | None, ...] = ()
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over each head's q and k before rotary
    gemma_norm: bool = False  # RMSNorm as (x / rms) * (1 + w) in fp32, then cast (Gemma)
    sandwich_norm: bool = False  # Gemma: norms after attention and before and after the MLP
    embed_scale: float | None = None  # Gemma: embeddings times sqrt(hidden_size)
    attn_scale: float | None = None  # q.k scale; None: head_dim ** -0.5
    attn_softcap: float | None = None  # Gemma 2: cap * tanh(scores / cap) before the mask
    final_softcap: float | None = None  # Gemma 2/3: the same on the output logits
    fused_qkv: bool = False  # Phi-3: one qkv_proj and one gate_up_proj, computed fused
    # Gemma 3: the sliding layers' own rotary frequencies and scaling (() = the global ones)
    local_rope_inv_freq: tuple[float, ...] = ()
    local_rope_scaling_factor: float = 1.0
    # LongRoPE (Phi-3): frequencies for a step whose longest row reaches past
    # `rope_original_max` positions; `rope_inv_freq` holds the short ones
    rope_long_inv_freq: tuple[float, ...] = ()
    rope_original_max: int = 0

    @property
    def has_projection(self) -> bool:
        return self.embed_dim != self.hidden_size

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def rotary_dim(self) -> int:
        """Leading dims of each head that rotate (< head_dim: partial rotary)."""
        return 2 * len(self.rope_inv_freq)

    def window_of(self, decoder_idx: int) -> int | None:
        """The sliding window of one decoder layer (None: it attends to every position)."""
        return self.layer_windows[decoder_idx] if self.layer_windows else self.sliding_window

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in {model_dir}: not an HF checkpoint directory")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path} is not a JSON object of settings")
        try:
            cfg = cls.from_dict(raw)
        except ConfigSizeError as err:
            raise ConfigSizeError(f"{path}: {err}") from None
        check_against_weights(cfg, Path(model_dir), path)
        return cfg

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        check_sizes(raw)
        arch, variant = _variant_of(raw)
        if variant == "opt":
            return _opt_config(raw)
        if variant in ("llama", "mistral", "qwen2"):
            return _llama_config(raw, arch, variant)
        return _NEW_FAMILIES[variant](raw, arch)


class ConfigSizeError(ValueError):
    """A config.json size that is not a sane whole number, or more weights than the files hold."""


def check_sizes(raw: dict) -> None:
    """Every size `raw` gives is a whole number within `SIZE_LIMITS` (before any arithmetic)."""
    for key, limit in SIZE_LIMITS.items():
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise ConfigSizeError(f"{key} is {value!r}; it must be a whole number from 1 to "
                                  f"{limit:,}")


def implied_values(cfg: ModelConfig) -> int:
    """Weight values the engine reads for `cfg`: each checkpoint tensor counted once (a tied
    head reads the embedding matrix)."""
    from engine.model.layers import layer_specs  # it imports this module

    shapes = {spec.source: spec.shape for layer in layer_specs(cfg) for spec in layer.weights}
    return sum(math.prod(shape) for shape in shapes.values())


def check_against_weights(cfg: ModelConfig, model_dir: Path, config_path: Path) -> None:
    """Refuse a config that implies more weights than the directory's files hold, before
    anything is allocated: each value takes at least one byte, and safetensors headers give
    the exact count. A directory without weight files is not checked."""
    from engine.checkpoint import stored_values  # it imports torch, safetensors

    stored, file_bytes = stored_values(model_dir)
    if not file_bytes:
        return
    implied = implied_values(cfg)
    held = stored if stored is not None else file_bytes
    if implied > held:
        unit = "values" if stored is not None else "bytes, at least one per value"
        raise ConfigSizeError(
            f"{config_path} implies {implied:,} weight values (vocab_size {cfg.vocab_size:,}, "
            f"hidden_size {cfg.hidden_size:,}, {cfg.num_layers:,} layers, intermediate_size "
            f"{cfg.intermediate_size:,}), but the weight files beside it hold {held:,} {unit}: "
            "the config does not describe these weights; use the config.json that came with "
            "them")


def _variant_of(raw: dict) -> tuple[str, str]:
    for arch in raw.get("architectures") or []:
        if arch in SUPPORTED_ARCHITECTURES:
            return arch, SUPPORTED_ARCHITECTURES[arch]
    found = raw.get("architectures") or raw.get("model_type")
    for arch in raw.get("architectures") or []:
        if arch in _OUT_OF_SCOPE:
            raise ValueError(_unsupported(found, _OUT_OF_SCOPE[arch]))
    model_type = raw.get("model_type")
    if model_type in _MODEL_TYPES:
        variant = _MODEL_TYPES[model_type]
        arch = next(name for name, var in SUPPORTED_ARCHITECTURES.items() if var == variant)
        return arch, variant
    raise ValueError(_unsupported(found, _OUT_OF_SCOPE.get(model_type)))


def _unsupported(found: object, reason: str | None) -> str:
    because = f" ({reason})" if reason else ""
    return (f"unsupported architecture {found!r}{because}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}")


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
        arch="OPTForCausalLM",
    )


def _llama_config(raw: dict, arch: str, variant: str) -> ModelConfig:
    """Llama, Mistral, Qwen2: read from the raw dict (as before the newer families came)."""
    heads = raw["num_attention_heads"]
    head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
    hf_config = _hf_config(raw, variant)
    rope = _rope(raw, hf_config)
    model_type = raw.get("model_type", "llama")
    use_window = model_type == "mistral" or raw.get("use_sliding_window", False)
    window = raw.get("sliding_window") if use_window else None
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
        **rope,
        **_windows(hf_config, window, raw["num_hidden_layers"]),
        eos_token_ids=_eos_ids(raw),
        pad_token_id=raw.get("pad_token_id"),
        torch_dtype=_dtype(raw),
        arch=arch,
    )


def _hf_config(raw: dict, variant: str):
    """transformers' own config object for `raw`: its defaults, its conversions of old keys
    (rope_scaling, rope_local_base_freq, sliding_window_pattern), its layer types."""
    from transformers import AutoConfig

    raw = dict(raw, model_type=raw.get("model_type") or _HF_MODEL_TYPE[variant])
    params = raw.get("rope_scaling") or raw.get("rope_parameters")
    if isinstance(params, dict) and params.get("type", params.get("rope_type")) == "su":
        # Phi-3's early name for LongRoPE; transformers maps it to "longrope" only after
        # validating, so it cannot load such a config itself: rename it first.
        key = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
        raw[key] = {k: v for k, v in params.items() if k != "type"} | {"rope_type": "longrope"}
    return AutoConfig.for_model(**raw)


def _windows(hf_config, window: int | None, num_layers: int) -> dict:
    """Per-layer windows: transformers' `layer_types` where the config has them (Qwen2/3's
    max_window_layers, Gemma's alternation), else `window` on every layer."""
    layer_types = getattr(hf_config, "layer_types", None)
    if window is None:
        return {"sliding_window": None, "layer_windows": ()}
    if not layer_types:
        return {"sliding_window": window, "layer_windows": (window,) * num_layers}
    windows = tuple(window if kind == "sliding_attention" else None for kind in layer_types)
    return {"sliding_window": window if any(windows) else None, "layer_windows": windows}


def _rope(raw: dict, hf_config, layer_type: str | None = None, partial: bool = False) -> dict:
    """Rotary inverse frequencies, computed by transformers' own rope functions so that every
    scaling type it knows (linear, llama3, yarn, longrope, ...) matches HF exactly. `partial`:
    the default type honours partial_rotary_factor (Phi-3 does; Llama's default does not)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(hf_config, "rope_parameters", None) or {}
    if layer_type is not None:
        params = params[layer_type]
    rope_type = params.get("rope_type", "default")
    if rope_type in ("dynamic",):
        raise ValueError(f"rope type {rope_type!r} depends on the sequence length; unsupported")
    out: dict = {"rope_scaling_factor": 1.0}
    if rope_type == "default":
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
        head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
        head_dim = getattr(hf_config, "head_dim", None) or head_dim
        dim = int(head_dim * params.get("partial_rotary_factor", 1.0)) if partial else head_dim
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    else:
        kwargs = {} if layer_type is None else {"layer_type": layer_type}
        inv_freq, out["rope_scaling_factor"] = ROPE_INIT_FUNCTIONS[rope_type](hf_config, **kwargs)
        if rope_type == "longrope":
            original = params["original_max_position_embeddings"]
            long_freq, _ = ROPE_INIT_FUNCTIONS[rope_type](hf_config, None, seq_len=original + 1,
                                                          **kwargs)
            out["rope_long_inv_freq"] = tuple(long_freq.tolist())
            out["rope_original_max"] = original
    out["rope_inv_freq"] = tuple(inv_freq.tolist())
    return out


def _rotary_common(raw: dict, hf, arch: str) -> dict:
    """Fields every newer rotary architecture reads the same way, from transformers' config."""
    heads = hf.num_attention_heads
    return {
        "family": "llama",
        "vocab_size": hf.vocab_size,
        "hidden_size": hf.hidden_size,
        "num_layers": hf.num_hidden_layers,
        "num_heads": heads,
        "num_kv_heads": getattr(hf, "num_key_value_heads", None) or heads,
        "head_dim": getattr(hf, "head_dim", None) or hf.hidden_size // heads,
        "intermediate_size": hf.intermediate_size,
        "max_positions": hf.max_position_embeddings,
        "norm_eps": hf.rms_norm_eps,
        "embed_dim": hf.hidden_size,
        "tie_word_embeddings": bool(hf.tie_word_embeddings),
        "eos_token_ids": _eos_ids(raw),
        "pad_token_id": raw.get("pad_token_id"),
        "torch_dtype": _dtype(raw),
        "arch": arch,
    }


def _qwen3_config(raw: dict, arch: str) -> ModelConfig:
    hf = _hf_config(raw, "qwen3")
    bias = bool(getattr(hf, "attention_bias", False))
    return ModelConfig(
        **_rotary_common(raw, hf, arch), activation=hf.hidden_act, qkv_bias=bias, out_bias=bias,
        qk_norm=True, **_rope(raw, hf), **_windows(hf, hf.sliding_window, hf.num_hidden_layers),
    )


def _gemma_config(raw: dict, arch: str) -> ModelConfig:
    gemma3 = arch == "Gemma3ForCausalLM"
    hf = _hf_config(raw, "gemma3" if gemma3 else "gemma2")
    if getattr(hf, "use_bidirectional_attention", False):
        raise ValueError(f"{arch} with use_bidirectional_attention (an embedding model) is not "
                         "a causal language model; unsupported")
    if gemma3 and hf.sliding_window is None and "sliding_attention" in hf.layer_types:
        raise ValueError("a Gemma 3 config with sliding layers but no sliding_window")
    if gemma3:  # global and local rotary bases (and scalings), by layer type
        rope = _rope(raw, hf, "full_attention")
        local = _rope(raw, hf, "sliding_attention")
        if "rope_long_inv_freq" in rope or "rope_long_inv_freq" in local:
            raise ValueError("longrope scaling on Gemma 3 is unsupported")
        rope |= {"local_rope_inv_freq": local["rope_inv_freq"],
                 "local_rope_scaling_factor": local["rope_scaling_factor"]}
    else:
        rope = _rope(raw, hf)
    bias = bool(getattr(hf, "attention_bias", False))
    return ModelConfig(
        **_rotary_common(raw, hf, arch), activation=hf.hidden_activation or "gelu_pytorch_tanh",
        qkv_bias=bias, out_bias=bias, qk_norm=gemma3, gemma_norm=True, sandwich_norm=True,
        embed_scale=hf.hidden_size**0.5, attn_scale=hf.query_pre_attn_scalar**-0.5,
        # transformers' Gemma 3 attention never passes its softcap on: it does not cap
        attn_softcap=None if gemma3 else hf.attn_logit_softcapping,
        final_softcap=hf.final_logit_softcapping,
        **rope, **_windows(hf, hf.sliding_window, hf.num_hidden_layers),
    )


def _phi3_config(raw: dict, arch: str) -> ModelConfig:
    hf = _hf_config(raw, "phi3")
    return ModelConfig(
        **_rotary_common(raw, hf, arch), activation=hf.hidden_act, fused_qkv=True,
        **_rope(raw, hf, partial=True),
        **_windows(hf, getattr(hf, "sliding_window", None), hf.num_hidden_layers),
    )


_NEW_FAMILIES = {
    "qwen3": _qwen3_config, "gemma2": _gemma_config, "gemma3": _gemma_config,
    "phi3": _phi3_config,
}
