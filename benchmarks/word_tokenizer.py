"""A word-level tokenizer for a random-weight benchmark checkpoint: id i is the word `w<i>`.

The checkpoints have no tokenizer of their own; the column pipeline (workload 3) takes text.
With one word per id, `ids -> text -> ids` is exact, so the pipeline runs on precisely the ids
every other system runs on. Ids 0..3 are the special tokens (prompts never use them).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

N_SPECIAL = 4
TOKENIZER_FILE = "tokenizer.json"


def word(token_id: int) -> str:
    return f"<s{token_id}>" if token_id < N_SPECIAL else f"w{token_id}"


def ids_to_text(ids: list[int]) -> str:
    return " ".join(word(token_id) for token_id in ids)


def ensure_word_tokenizer(model_dir: Path) -> None:
    """Writes the tokenizer files into `model_dir` unless it already has a tokenizer."""
    if (model_dir / TOKENIZER_FILE).is_file():
        return
    config = json.loads((model_dir / "config.json").read_text())
    vocab = {word(token_id): token_id for token_id in range(config["vocab_size"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=word(3)))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    bos = word(config.get("bos_token_id") or 0)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, vocab[bos])]
    )
    eos = word(config.get("eos_token_id") or 2)
    pad = word(config.get("pad_token_id") or 1)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos,
                                      pad_token=pad, unk_token=word(3))
    wrapped.save_pretrained(model_dir)
