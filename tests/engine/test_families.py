"""Qwen3, Gemma 2, Gemma 3 and Phi-3 (issue 13): token for token what HF transformers gives.

Tiny seeded checkpoints (tests/models.py) with each family's peculiarities switched on: sliding
windows of 6 positions (10 for Phi-3) that the prompts outgrow, soft caps small enough to
bite, Gemma 3's local and global rotary bases, Phi-3's fused projections, partial rotary and
LongRoPE with distinct short and long factors (long past position 16).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

import flexgen_wrangle as fw
from engine import Engine, ModelConfig, Placement, Policy, SamplingParams, Workload, plan
from engine.model import layer_specs
from engine.policy import predict
from tests.engine.policy.conftest import fixed_profile
from tests.models import (
    NEW_FAMILIES,
    PHI3_ORIGINAL_MAX,
    WINDOW,
    build_wrangle_family,
    hf_greedy_many,
    hf_logprob_scores,
)

P, ON_DEVICE, ON_DISK = Placement, Placement.on("device"), Placement.on("disk")
POLICIES = {
    "all-device": Policy(4, 2, ON_DEVICE, ON_DEVICE, ON_DEVICE),
    "all-disk": Policy(2, 3, ON_DISK, ON_DISK, ON_DISK),
    "mixed": Policy(2, 2, P(30, 30, 40), P(30, 40, 30), P(40, 30, 30)),
    "mixed-cpu-attention-no-overlap": Policy(
        3, 2, P(50, 50, 0), P(0, 100, 0), ON_DEVICE, cpu_attention=True, overlap=False),
}
MAX_NEW = 6
# Mixed lengths, most longer than every window, two left-padded pairs in one GPU batch, a
# one-token prompt, a repeat. For Phi-3's LongRoPE every row stays on one side of position 16
# for the whole generation: at most 11 + 5 fed positions, or long from the prompt on.
PROMPTS = [list(range(10, 30)), [5, 6, 7], list(range(40, 51)), [9], list(range(60, 78)),
           [5, 6, 7], list(range(20, 39)), [30, 31, 32, 33, 34, 35, 36, 37, 38], [70] * 7]
KEYS = tuple(map(tuple, PROMPTS))
PREFIX = list(range(3, 20))  # 17 tokens: longer than the windows, long for LongRoPE
SCORE_PROMPTS = [[5, 6, 7], list(range(10, 20)), [40]]
CANDIDATES = [[30], [31, 32, 33], [40, 41]]


@pytest.fixture(scope="module")
def references(model_dirs):
    cache = {}

    def get(family: str, prompts: tuple = KEYS, max_new: int = MAX_NEW):
        key = (family, prompts, max_new)
        if key not in cache:
            cache[key] = hf_greedy_many(model_dirs(family), [list(p) for p in prompts], max_new)
        return cache[key]

    return get


def _generate(model_dir, policy, prompts=PROMPTS, max_new=MAX_NEW, prefix=None):
    with Engine.from_pretrained(model_dir, policy=policy, dtype=torch.float32) as eng:
        return eng.generate(prompts, SamplingParams(max_new_tokens=max_new), prefix=prefix)


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_greedy_matches_hf(model_dirs, references, family, policy_name):
    assert _generate(model_dirs(family), POLICIES[policy_name]) == references(family)


def test_configs_read_as_transformers_reads_them(model_dirs):
    qwen3 = ModelConfig.from_pretrained(model_dirs("qwen3"))
    assert (qwen3.arch, qwen3.qk_norm, qwen3.head_dim, qwen3.tie_word_embeddings) == (
        "Qwen3ForCausalLM", True, 16, True)
    assert qwen3.layer_windows == (None, WINDOW, WINDOW)  # max_window_layers=1
    gemma2 = ModelConfig.from_pretrained(model_dirs("gemma2"))
    assert gemma2.layer_windows == (WINDOW, None, WINDOW)
    assert (gemma2.attn_softcap, gemma2.final_softcap, gemma2.attn_scale) == (5.0, 10.0, 12**-0.5)
    gemma3 = ModelConfig.from_pretrained(model_dirs("gemma3"))
    assert gemma3.layer_windows == (WINDOW, WINDOW, None, WINDOW)
    assert gemma3.local_rope_inv_freq != gemma3.rope_inv_freq
    assert [spec.local_rope for spec in layer_specs(gemma3)[1:-1]] == [True, True, False, True]
    phi3 = ModelConfig.from_pretrained(model_dirs("phi3"))
    assert (phi3.fused_qkv, phi3.rotary_dim, phi3.head_dim) == (True, 6, 8)
    assert phi3.rope_original_max == PHI3_ORIGINAL_MAX and phi3.rope_long_inv_freq


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3", "phi3"])
def test_sliding_layers_cache_only_the_window(model_dirs, family):
    """A windowed layer's KV cache is a ring of `window` columns, the others hold them all."""
    specs = layer_specs(ModelConfig.from_pretrained(model_dirs(family)))[1:-1]
    assert {spec.cache_columns(40) for spec in specs if spec.window} == {specs[-1].window}
    assert {spec.cache_columns(40) for spec in specs if not spec.window} <= {40}
    assert all(spec.cache_columns(spec.window) == spec.window for spec in specs if spec.window)
    with Engine.from_pretrained(model_dirs(family), policy=POLICIES["all-device"],
                                dtype=torch.float32) as eng:
        shapes = []
        real = eng._tiers.empty

        def spy(shape, dtype, what):
            shapes.append((what, shape[3]))
            return real(shape, dtype, what)

        eng._tiers.empty = spy
        eng.generate([list(range(10, 40))], SamplingParams(max_new_tokens=2))
    by_layer = dict(shapes)
    for spec in specs:
        assert by_layer[f"KV cache of layer {spec.index}"] == (spec.window or 32)


def test_qwen2_window_follows_max_window_layers(tmp_path):
    """Qwen2 slides only from layer max_window_layers on, as transformers' layer_types say."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=96, hidden_size=32, num_hidden_layers=3, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         use_sliding_window=True, sliding_window=5, max_window_layers=2,
                         eos_token_id=2, bos_token_id=0, pad_token_id=1)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path)
    assert ModelConfig.from_pretrained(tmp_path).layer_windows == (None, None, 5)
    prompts = PROMPTS[:3]
    assert _generate(tmp_path, POLICIES["mixed"], prompts) == hf_greedy_many(tmp_path, prompts,
                                                                              MAX_NEW)


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3", "phi3"])
def test_shared_prefix_matches_hf(model_dirs, family):
    """The prefix is longer than the window: its ring is copied into every row's."""
    prompts = PROMPTS[:4]
    expected = hf_greedy_many(model_dirs(family), [PREFIX + p for p in prompts], MAX_NEW)
    assert _generate(model_dirs(family), POLICIES["mixed"], prompts, prefix=PREFIX) == expected


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_scores_match_hf_logprobs(model_dirs, family):
    model_dir = model_dirs(family)
    with Engine.from_pretrained(model_dir, policy=POLICIES["mixed"], dtype=torch.float32) as eng:
        with_prefix = eng.score(SCORE_PROMPTS, CANDIDATES, prefix=PREFIX)
        without = eng.score(SCORE_PROMPTS, CANDIDATES)
    expected_prefixed = hf_logprob_scores(model_dir, [PREFIX + p for p in SCORE_PROMPTS],
                                          CANDIDATES)
    expected = hf_logprob_scores(model_dir, SCORE_PROMPTS, CANDIDATES)
    assert torch.allclose(torch.tensor(with_prefix), torch.tensor(expected_prefixed), atol=1e-4)
    assert torch.allclose(torch.tensor(without), torch.tensor(expected), atol=1e-4)


@pytest.mark.parametrize("family", ["gemma3", "phi3"])
def test_compressed_rings_run(model_dirs, family):
    """4-bit caches (of rings too) and weights: lossy, so not compared with HF."""
    policy = Policy(2, 2, P(30, 30, 40), P(0, 50, 50), ON_DEVICE, compress_cache=True,
                    compress_weights=True)
    with Engine.from_pretrained(model_dirs(family), policy=policy, dtype=torch.float32) as eng:
        got = eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True))
    assert all(len(out) == MAX_NEW for out in got)


def test_phi3_su_rope_is_longrope(model_dirs, references, tmp_path):
    """Early Phi-3 configs name LongRoPE "su" (transformers 5 cannot load them itself)."""
    target = shutil.copytree(model_dirs("phi3"), tmp_path / "phi3_su")
    raw = json.loads((target / "config.json").read_text())
    params = raw.pop("rope_parameters")
    raw["rope_scaling"] = {"type": "su", "short_factor": params["short_factor"],
                           "long_factor": params["long_factor"]}
    raw["rope_theta"] = params["rope_theta"]
    (target / "config.json").write_text(json.dumps(raw))
    assert _generate(target, POLICIES["mixed"]) == references("phi3")


def test_phi3_row_crossing_the_original_length(model_dirs, references):
    """Documented limit (docs/models.md): transformers' Phi-3 generate re-encodes a row with
    the long factors the step it grows past original_max_position_embeddings; the engine
    switches for the new tokens only, keeping what it cached. Every token up to the crossing
    is HF's."""
    prompts = ((5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),)  # 13 + 3 fed <= 16 < 13 + 4
    expected = references("phi3", prompts, 8)
    got = _generate(model_dirs("phi3"), POLICIES["all-device"], [list(prompts[0])], 8)
    crossing = PHI3_ORIGINAL_MAX + 1 - len(prompts[0])  # the first token made after it
    assert got[0][:crossing] == expected[0][:crossing]


@pytest.mark.parametrize("family", ["gemma2", "phi3"])
def test_planned_policy_fits_and_matches_hf(model_dirs, references, family):
    memory = {"device": "300KiB", "host": "300KiB", "disk": "10MiB"}
    workload = Workload.from_lengths([len(p) for p in PROMPTS], MAX_NEW)
    chosen = plan(model_dirs(family), workload, memory, device="cpu", dtype=torch.float32,
                  profile=fixed_profile())
    with Engine.from_pretrained(model_dirs(family), policy=chosen.policy, dtype=torch.float32,
                                memory=memory) as eng:
        assert eng.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_NEW)) == references(family)


@pytest.mark.parametrize("family", ["gemma3", "phi3"])
def test_predicted_peaks_count_the_rings(model_dirs, family):
    """The cost model sizes windowed caches as the engine allocates them."""
    policy = Policy(2, 4, ON_DEVICE, P(25, 25, 50), ON_DEVICE, overlap=False)
    lengths = [20, 19, 18, 11, 9, 7, 3, 3]
    with Engine.from_pretrained(model_dirs(family), policy=policy, dtype=torch.float32) as eng:
        eng.generate([[5] * n for n in lengths],
                     SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True))
        measured = dict(eng.stats.peak_bytes)
        cfg = eng.config
    predicted = predict(cfg, layer_specs(cfg), policy, Workload.from_lengths(lengths, MAX_NEW),
                        fixed_profile(), torch.float32)
    for tier, peak in measured.items():
        assert abs(predicted.peak_bytes[tier] - peak) <= 0.15 * peak, (tier, predicted, peak)


@pytest.fixture(scope="module")
def wrangle_dirs(tmp_path_factory):
    cache = {}

    def get(family: str):
        if family not in cache:
            chat = family in ("qwen3", "gemma3")  # the others run with plain prompts
            cache[family] = build_wrangle_family(tmp_path_factory.mktemp(f"w_{family}"), family,
                                                 seed=3, chat=chat)
        return cache[family]

    return get


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3", "phi3"])
def test_classify_and_extract_run(wrangle_dirs, family, monkeypatch, tmp_path):
    monkeypatch.setenv("FLEXGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("engine.policy.probes.measure_profile",
                        lambda device, offload_dir=None: fixed_profile(device))
    texts = ["I love this phone, it works great.", None, "It broke after two days."]
    with fw.LLM(wrangle_dirs(family), progress=False, dtype=torch.float32) as llm:  # planned
        labels = llm.classify(texts, ["positive", "negative"]).to_pylist()
        fields = llm.extract(["Invoice from Acme Ltd, total $12.50."],
                             {"vendor": "string", "total": "float"}, max_string_length=8)
        assert llm.last_stats.parse_failures == 0
        assert llm.encoder.use_chat == (family in ("qwen3", "gemma3"))
    assert labels[1] is None
    assert all(row["label"] in ("positive", "negative") and 0 < row["probability"] <= 1
               for row in (labels[0], labels[2]))
    row = fields.to_pylist()[0]
    assert isinstance(row["vendor"], str) and isinstance(row["total"], float)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe"}, "Qwen3-MoE"),
     ({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3"},
      "multimodal Gemma 3"),
     ({"architectures": ["GPTNeoXForCausalLM"]}, None)],
)
def test_unsupported_architectures_list_every_supported_one(raw, reason):
    with pytest.raises(ValueError) as err:
        ModelConfig.from_dict(raw)
    message = str(err.value)
    assert reason is None or reason in message
    for arch in ("OPTForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                 "Qwen3ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"):
        assert arch in message
