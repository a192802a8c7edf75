"""Seeded tiny random checkpoints, built locally with transformers (never from a hub)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
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

# The newer families (issue 13), each with what makes it differ switched on and small enough
# to be exercised: windows of 6 positions (prompts in the tests are longer), Phi-3's LongRoPE
# switching to its long factors past position 16. `ids`: eos/bos/pad token ids.
WINDOW = 6
PHI3_ORIGINAL_MAX = 16


def _qwen3(vocab: int, positions: int, ids: dict) -> Qwen3Config:
    """Per-head q/k norms, head_dim != hidden / heads, tied head, GQA; layers 1 and 2 slide."""
    return Qwen3Config(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=3, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=positions, tie_word_embeddings=True, use_sliding_window=True,
        sliding_window=WINDOW, max_window_layers=1, **ids,
    )


def _qwen3_untied(vocab: int, positions: int, ids: dict) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=positions,
        tie_word_embeddings=False, rope_theta=1000.0, **ids,
    )


def _gemma2(vocab: int, positions: int, ids: dict) -> Gemma2Config:
    """Soft caps small enough to bite; query_pre_attn_scalar != head_dim; sliding, global,
    sliding."""
    return Gemma2Config(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=3, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=12,
        max_position_embeddings=positions, sliding_window=WINDOW, attn_logit_softcapping=5.0,
        final_logit_softcapping=10.0, **ids,
    )


def _gemma3(vocab: int, positions: int, ids: dict) -> Gemma3TextConfig:
    """Pattern 3 (sliding, sliding, global, sliding), local base 100 vs global 10000 with
    linear scaling, q/k norms, final soft cap."""
    return Gemma3TextConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=4, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=16,
        max_position_embeddings=positions, sliding_window=WINDOW, sliding_window_pattern=3,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
        },
        final_logit_softcapping=10.0, **ids,
    )


def _phi3(vocab: int, positions: int, ids: dict) -> Phi3Config:
    """Fused projections, LongRoPE with distinct short and long factors, partial rotary
    (6 of 8 dims), a sliding window on every layer."""
    return Phi3Config(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
        original_max_position_embeddings=PHI3_ORIGINAL_MAX, sliding_window=WINDOW + 4,
        rope_scaling={"type": "longrope", "short_factor": [1.0, 1.3, 1.9],
                      "long_factor": [2.5, 4.0, 7.0]},
        partial_rotary_factor=0.75, tie_word_embeddings=False, **ids,
    )


def _phi3_plain(vocab: int, positions: int, ids: dict) -> Phi3Config:
    """Phi-3 as its 4k-context models are: default rope, full rotary, no window."""
    return Phi3Config(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=positions,
        original_max_position_embeddings=positions, tie_word_embeddings=False, **ids,
    )


NEW_FAMILY_CONFIGS = {
    "qwen3": _qwen3, "qwen3_untied": _qwen3_untied, "gemma2": _gemma2, "gemma3": _gemma3,
    "phi3": _phi3, "phi3_plain": _phi3_plain,
}
NEW_FAMILIES = tuple(NEW_FAMILY_CONFIGS)
_IDS = {"eos_token_id": EOS, "bos_token_id": 0, "pad_token_id": 1}


def _make_config(family: str, vocab: int = VOCAB, positions: int = 64, ids: dict | None = None):
    if family in NEW_FAMILY_CONFIGS:
        return NEW_FAMILY_CONFIGS[family](vocab, positions, _IDS if ids is None else ids)
    return _CONFIGS[family]()


def _widen(model) -> None:
    """Widen the random init so that greedy choices are well separated. Norm weights are
    randomized too, so that q/k norms and Gemma's (1 + w) norms are tested off their init."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
            elif "norm" in name:
                param.normal_(0.0, 0.2).add_(0.0 if "gemma" in type(model).__name__.lower() else 1.0)


def build_model(
    out_dir: Path, family: str, seed: int = 0, dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None, safe: bool = True,
) -> Path:
    """Save a seeded random model of `family` to `out_dir`; returns the directory."""
    torch.manual_seed(seed)
    config = _make_config(family)
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    if family in NEW_FAMILY_CONFIGS:
        _widen(model)
    else:
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


def hf_greedy_many(model_dir: Path, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    """`hf_greedy` for several prompts, each alone (no padding), the model loaded once."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             do_sample=False, pad_token_id=1)
        outs.append(out[0, len(prompt):].tolist())
    return outs


def hf_logprob_scores(model_dir: Path, prompts: list[list[int]],
                      candidates: list[list[int]]) -> list[list[float]]:
    """HF's total log-probability of each candidate after each prompt (one forward over
    prompt + candidate each): the reference for `Engine.score`."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    scores = []
    for prompt in prompts:
        row = []
        for cand in candidates:
            with torch.no_grad():
                logprobs = model(torch.tensor([prompt + cand])).logits.log_softmax(-1)[0]
            row.append(sum(float(logprobs[len(prompt) - 1 + t, cand[t]]) for t in range(len(cand))))
        scores.append(row)
    return scores


def assert_engine_scores_match_hf(model_dir: Path, policy, prompts: list[list[int]],
                                  candidates: list[list[int]]) -> None:
    """`Engine.score` under `policy` (fp32) gives HF's log-probabilities (within 1e-4)."""
    from engine import Engine

    with Engine.from_pretrained(model_dir, policy=policy, dtype=torch.float32) as eng:
        scores = eng.score(prompts, candidates)
    expected = hf_logprob_scores(model_dir, prompts, candidates)
    assert torch.allclose(torch.tensor(scores), torch.tensor(expected), atol=1e-4)


def build_wrangle_family(out_dir: Path, family: str, seed: int = 0, chat: bool = False) -> Path:
    """A seeded random fp32 model of a newer family over the tiny local BPE tokenizer of
    tests/conftest.py (saved with it, optionally with its chat template), for fw.LLM."""
    from tests import conftest

    tokenizer = conftest.build_tokenizer()
    if chat:
        tokenizer.chat_template = conftest.CHAT_TEMPLATE
    torch.manual_seed(seed)
    ids = {"eos_token_id": conftest.EOS, "bos_token_id": conftest.BOS, "pad_token_id": conftest.PAD}
    model = AutoModelForCausalLM.from_config(_make_config(family, len(tokenizer), 512, ids)).eval()
    _widen(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
