"""Weight declarations: which tensors each layer needs, their shapes and checkpoint names.

Layers are `embed`, `decoder` x num_layers, `head`: the unit of weight loading in the block
schedule. Checkpoint names are given without the optional `model.` prefix. A decoder layer also
says how it attends: its sliding window (whose KV cache is then a ring of `cache_columns`
columns, not one column per position) and whether it uses the local rotary frequencies.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import ModelConfig


@dataclass(frozen=True)
class WeightSpec:
    name: str  # name inside the layer, e.g. "q_proj.weight"
    shape: tuple[int, ...]
    source: str  # checkpoint key, e.g. "decoder.layers.3.self_attn.q_proj.weight"


@dataclass(frozen=True)
class LayerSpec:
    kind: str  # "embed" | "decoder" | "head"
    index: int  # position in the layer list
    weights: tuple[WeightSpec, ...]
    window: int | None = None  # decoder layers: sliding window; None attends to every position
    local_rope: bool = False  # Gemma 3's sliding layers: the local rotary base

    def cache_columns(self, capacity: int) -> int:
        """Columns of this layer's KV cache for rows of `capacity` columns: all of them, or
        for a sliding window shorter than that only `window`: a ring of the last `window`
        positions, which is all that any later query can attend to (engine.model.step)."""
        return capacity if self.window is None or self.window >= capacity else self.window

    @property
    def decoder_idx(self) -> int:
        """Index among decoder layers (the KV cache belongs to these)."""
        return self.index - 1


def _linear(name: str, out_dim: int, in_dim: int, source: str, bias: bool) -> list[WeightSpec]:
    specs = [WeightSpec(f"{name}.weight", (out_dim, in_dim), f"{source}.weight")]
    if bias:
        specs.append(WeightSpec(f"{name}.bias", (out_dim,), f"{source}.bias"))
    return specs


def _norm(name: str, dim: int, source: str, bias: bool) -> list[WeightSpec]:
    specs = [WeightSpec(f"{name}.weight", (dim,), f"{source}.weight")]
    if bias:
        specs.append(WeightSpec(f"{name}.bias", (dim,), f"{source}.bias"))
    return specs


def _attention(cfg: ModelConfig, src: str, out_name: str) -> list[WeightSpec]:
    q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    if cfg.fused_qkv:  # Phi-3: one matrix, q rows then k rows then v rows
        specs = _linear("qkv_proj", q_dim + 2 * kv_dim, cfg.hidden_size, f"{src}.qkv_proj",
                        cfg.qkv_bias)
    else:
        specs = [
            *_linear("q_proj", q_dim, cfg.hidden_size, f"{src}.q_proj", cfg.qkv_bias),
            *_linear("k_proj", kv_dim, cfg.hidden_size, f"{src}.k_proj", cfg.qkv_bias),
            *_linear("v_proj", kv_dim, cfg.hidden_size, f"{src}.v_proj", cfg.qkv_bias),
        ]
    if cfg.qk_norm:  # Qwen3, Gemma 3: one weight over head_dim, shared by all heads
        specs += _norm("q_norm", cfg.head_dim, f"{src}.q_norm", bias=False)
        specs += _norm("k_norm", cfg.head_dim, f"{src}.k_norm", bias=False)
    return [*specs, *_linear("o_proj", cfg.hidden_size, q_dim, f"{src}.{out_name}", cfg.out_bias)]


def _opt_decoder(cfg: ModelConfig, layer_idx: int) -> list[WeightSpec]:
    src, hidden, ffn = f"decoder.layers.{layer_idx}", cfg.hidden_size, cfg.intermediate_size
    return [
        *_norm("attn_norm", hidden, f"{src}.self_attn_layer_norm", bias=True),
        *_attention(cfg, f"{src}.self_attn", "out_proj"),
        *_norm("mlp_norm", hidden, f"{src}.final_layer_norm", bias=True),
        *_linear("fc1", ffn, hidden, f"{src}.fc1", cfg.mlp_bias),
        *_linear("fc2", hidden, ffn, f"{src}.fc2", cfg.mlp_bias),
    ]


def _llama_decoder(cfg: ModelConfig, layer_idx: int) -> list[WeightSpec]:
    src, hidden, ffn = f"layers.{layer_idx}", cfg.hidden_size, cfg.intermediate_size
    specs = [
        *_norm("attn_norm", hidden, f"{src}.input_layernorm", bias=False),
        *_attention(cfg, f"{src}.self_attn", "o_proj"),
    ]
    if cfg.sandwich_norm:  # Gemma: post_attention_layernorm normalizes the attention output
        specs += _norm("post_attn_norm", hidden, f"{src}.post_attention_layernorm", bias=False)
        specs += _norm("mlp_norm", hidden, f"{src}.pre_feedforward_layernorm", bias=False)
    else:
        specs += _norm("mlp_norm", hidden, f"{src}.post_attention_layernorm", bias=False)
    if cfg.fused_qkv:  # Phi-3: gate rows then up rows
        specs += _linear("gate_up_proj", 2 * ffn, hidden, f"{src}.mlp.gate_up_proj", cfg.mlp_bias)
    else:
        specs += _linear("gate_proj", ffn, hidden, f"{src}.mlp.gate_proj", cfg.mlp_bias)
        specs += _linear("up_proj", ffn, hidden, f"{src}.mlp.up_proj", cfg.mlp_bias)
    specs += _linear("down_proj", hidden, ffn, f"{src}.mlp.down_proj", cfg.mlp_bias)
    if cfg.sandwich_norm:
        specs += _norm("post_mlp_norm", hidden, f"{src}.post_feedforward_layernorm", bias=False)
    return specs


def _embed(cfg: ModelConfig) -> list[WeightSpec]:
    if cfg.family == "llama":
        return [WeightSpec("tokens", (cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")]
    specs = [
        WeightSpec("tokens", (cfg.vocab_size, cfg.embed_dim), "decoder.embed_tokens.weight"),
        # OPT offsets learned positions by 2 (a fairseq legacy).
        WeightSpec(
            "positions", (cfg.max_positions + 2, cfg.hidden_size), "decoder.embed_positions.weight"
        ),
    ]
    if cfg.has_projection:
        specs += _linear("project_in", cfg.hidden_size, cfg.embed_dim, "decoder.project_in", False)
    return specs


def _head(cfg: ModelConfig) -> list[WeightSpec]:
    prefix = "decoder." if cfg.family == "opt" else ""
    norm_src = "decoder.final_layer_norm" if cfg.family == "opt" else "norm"
    specs = _norm("norm", cfg.hidden_size, norm_src, cfg.family == "opt") if cfg.final_norm else []
    if cfg.has_projection:
        specs += _linear("project_out", cfg.embed_dim, cfg.hidden_size, "decoder.project_out", False)
    # A tied head reads the embedding matrix; the loader falls back to it when lm_head is absent.
    tokens = f"{prefix}embed_tokens.weight"
    source = tokens if cfg.tie_word_embeddings else "lm_head.weight"
    return [*specs, WeightSpec("lm_head", (cfg.vocab_size, cfg.embed_dim), source)]


def layer_specs(cfg: ModelConfig) -> list[LayerSpec]:
    decoder = _opt_decoder if cfg.family == "opt" else _llama_decoder
    layers = [LayerSpec("embed", 0, tuple(_embed(cfg)))]
    for layer_idx in range(cfg.num_layers):
        window = cfg.window_of(layer_idx)
        if window is not None and window != cfg.sliding_window:
            # one window size per model: the step inputs build one mask for all such layers
            raise ValueError(f"layer {layer_idx} has window {window}, the model {cfg.sliding_window}")
        local = window is not None and bool(cfg.local_rope_inv_freq)
        weights = tuple(decoder(cfg, layer_idx))
        layers.append(LayerSpec("decoder", layer_idx + 1, weights, window, local))
    layers.append(LayerSpec("head", cfg.num_layers + 1, tuple(_head(cfg))))
    return layers
