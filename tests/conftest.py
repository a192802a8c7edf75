"""Shared fixtures: tiny seeded models with a tiny BPE tokenizer trained locally (no hub, ever).

The tokenizer is built like the demo model's: byte-level BPE where newlines and digits are
their own pre-tokens, `<s>`, `</s>`, `<pad>` as ids 0, 1, 2, and BOS prepended to every encoding.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
BOS, EOS, PAD = 0, 1, 2
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = (
    "Classify the text into one of the labels.\nLabels: positive, negative, neutral\n\n"
    "Text: I love this phone, it works great.\nLabel: positive\n\n"
    "Text: It broke after two days.\nLabel: negative\n\n"
    'Extract the fields as JSON.\nSchema: {"vendor":"string","total":"float","date":"date"}\n\n'
    'Text: Invoice from Acme Ltd, total $12.50, dated 2024-03-05.\nJSON: {"vendor":"Acme Ltd",'
    '"total":12.5,"date":"2024-03-05","tags":["a","b"],"paid":true,"count":3}\n\n'
    "Summarize: the quick brown fox jumps over the lazy dog. Title: a story about animals."
)


def build_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=1,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=512)


def _config(family: str, vocab: int):
    common = {"vocab_size": vocab, "eos_token_id": EOS, "bos_token_id": BOS, "pad_token_id": PAD}
    if family == "opt":
        return OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                         max_position_embeddings=512, word_embed_proj_dim=32, **common)
    return LlamaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                       num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512, tie_word_embeddings=False, **common)


def build_wrangle_model(out_dir: Path, family: str = "llama", seed: int = 0,
                        chat: bool = False) -> Path:
    """A seeded random fp32 model whose vocabulary is the tiny tokenizer's, saved with it."""
    tokenizer = build_tokenizer()
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family, len(tokenizer))).eval()
    with torch.no_grad():  # wider than the default init, so greedy choices are well separated
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


@pytest.fixture(scope="session")
def wrangle_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wrangle_model(tmp_path_factory.mktemp("wrangle_llama"), "llama")


@pytest.fixture(scope="session")
def wrangle_opt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wrangle_model(tmp_path_factory.mktemp("wrangle_opt"), "opt", seed=1)


@pytest.fixture(scope="session")
def wrangle_chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wrangle_model(tmp_path_factory.mktemp("wrangle_chat"), "llama", seed=2,
                               chat=True)


@pytest.fixture(scope="session")
def wrangle_llm(wrangle_model_dir: Path):
    """One fp32 LLM over the tiny Llama, shared by the wrangling and adapter tests."""
    import flexgen_wrangle as fw

    with fw.LLM(wrangle_model_dir, progress=False, dtype=torch.float32, policy=None) as llm:
        yield llm


def _ctrl_c_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


CTRL_C_DEFAULT = _ctrl_c_default  # a child's preexec_fn: its Python then raises on Ctrl-C


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt in this process for the test, whatever it inherited: a
    suite started in the background (`make test &`) inherits SIGINT ignored, and Python then
    installs no handler. Pass `CTRL_C_DEFAULT` as preexec_fn to a child that must see it."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Each test starts with the process's torch thread count: code that sets it for its own
    process (a Ray actor, a stage worker) may run in this one, and fp32 matmuls round
    differently at another thread count, so a later test's reference would differ in the last
    bits from the same run in a subprocess."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
