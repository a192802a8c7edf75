"""Train the project's own demo model on CPU: a byte-level BPE tokenizer and a small Llama.

    python -m examples.train_demo_model --out examples/demo_model [--minutes 18]

The corpus comes from `examples.demo_data` (seed A, rows of the demo table removed), formatted
with exactly the `flexgen_wrangle.prompts` formats (see `examples.demo_tasks`): mostly invoice
extraction (the hard task), some classification, plain documents, and an auxiliary "repeat the
text" task that teaches the copying extraction needs. The loss covers the answers + EOS of task
examples, the copies, and the whole of plain documents. Invoice extraction is learned late
(around step 1,500: finding the vendor and the currency), hence the held peak learning rate.
Fixed seeds and a fixed step count make runs reproducible; `--minutes` is a safety cap: when
the wall clock gets ahead of the step count, the learning-rate schedule follows the clock so
the run still ends annealed inside the budget (and is then no longer bit-reproducible).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Shared cores: OpenMP threads that spin in barriers while another process holds the core
# slow training down several times over; sleeping waits cost little. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from examples import demo_data
from examples.demo_tasks import (
    Example,
    classify_example,
    copy_example,
    evaluate,
    extract_example,
)

log = logging.getLogger("train_demo_model")

TRAIN_SEED = 0  # seed A; the demo table uses demo_data.TABLE_SEED
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")  # ids 0, 1, 2
IGNORE = -100  # label id the loss skips
SAVE_SECONDS = 20.0  # kept back from the --minutes budget for saving the checkpoint
Batch = tuple[torch.Tensor, torch.Tensor]

# Pre-tokenizer pieces: GPT-2's (a word carries its leading space), with these changes:
# - a JSON key with its colon and quotes is one piece (`"vendor":"`, `,"total":`), so the
#   position where a value starts says which field it is, by itself;
# - a space before a capital joins the piece before it (`from `, `: `), so a name is the same
#   tokens in running text and after `"vendor":"`, and the token before it says what it is;
# - digits and newlines are single pieces (numbers copy digit by digit; a prompt tokenizes the
#   same whole or split at a line break, for shared-prefix caching); quotes stand alone.
PIECES = (
    r',?"\w+":"?|\n|\p{N}(?: (?=\p{Lu}))?| ?\p{L}+(?: (?=\p{Lu}))?'
    r'| ?[^\s\p{L}\p{N}"]+(?: (?=\p{Lu}))?|"|[^\S\n]+'
)


# -- corpus --------------------------------------------------------------------------------


def build_examples(n_records: int, seed: int, exclude: set[str],
                   weights: Sequence[float] = (0.1, 0.1, 0.8),
                   plain_share: float = 0.05, copy_share: float = 0.3) -> list[Example]:
    """Task examples (classify / extract) plus some plain documents, shuffled. `weights`
    are the shares of review / ticket / invoice rows; extraction is the harder task."""
    rng = random.Random(seed)
    kinds = rng.choices(demo_data.KINDS, weights=weights, k=n_records)
    rows = [demo_data.make_record(rng, kind, idx) for idx, kind in enumerate(kinds)]
    rows = [row for row in rows if row["text"] not in exclude]
    pools = {kind: [row for row in rows if row["kind"] == kind][:2000] for kind in demo_data.KINDS}
    examples: list[Example] = []
    for row in rows:
        if row["kind"] == "invoice":
            examples.append(extract_example(rng, row, pools["invoice"]))
            if rng.random() < copy_share:
                examples.append(copy_example(row))
        else:
            examples.append(classify_example(rng, row, pools[row["kind"]]))
        if rng.random() < plain_share:
            examples.append([(row["text"], True)])
    rng.shuffle(examples)
    return examples


# -- tokenizer -----------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the pieces of `PIECES` (see there)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PIECES), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=512,
    )


def encode(tokenizer: PreTrainedTokenizerFast, examples: Sequence[Example],
           max_len: int) -> list[Batch]:
    """(ids, labels) per example: BOS + the joined text + EOS. A token whose first character
    lies in a scored segment keeps its id as label (so does EOS); the rest are IGNORE."""
    texts = ["".join(text for text, _ in example) for example in examples]
    encoded_texts = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    encoded = []
    for example, token_ids, offsets in zip(examples, encoded_texts["input_ids"],
                                           encoded_texts["offset_mapping"], strict=True):
        scored_chars = []  # (begin, end) character spans of scored segments
        at = 0
        for text, scored in example:
            if scored:
                scored_chars.append((at, at + len(text)))
            at += len(text)
        ids, labels = [bos, *token_ids, eos], [IGNORE]
        for token_id, (begin, _) in zip(token_ids, offsets, strict=True):
            hit = any(lo <= begin < hi for lo, hi in scored_chars)
            labels.append(token_id if hit else IGNORE)
        labels.append(eos)
        encoded.append((torch.tensor(ids[-max_len:]), torch.tensor(labels[-max_len:])))
    return encoded


def _pad(chunk: Sequence[Batch]) -> Batch:
    width = max(len(ids) for ids, _ in chunk)
    ids = torch.full((len(chunk), width), 2, dtype=torch.long)  # (B, T), <pad> = 2
    labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)  # (B, T)
    for row_idx, (row_ids, row_labels) in enumerate(chunk):
        ids[row_idx, : len(row_ids)] = row_ids
        labels[row_idx, : len(row_labels)] = row_labels
    return ids, labels


def make_batches(encoded: Sequence[Batch], tokens_per_batch: int, seed: int) -> list[Batch]:
    """Length-bucketed, right-padded batches of at most `tokens_per_batch` tokens, shuffled."""
    ordered = sorted(encoded, key=lambda pair: len(pair[0]))
    batches: list[Batch] = []
    chunk: list[Batch] = []
    for pair in ordered:  # ascending length: the newest row is the widest
        if chunk and (len(chunk) + 1) * len(pair[0]) > tokens_per_batch:
            batches.append(_pad(chunk))
            chunk = []
        chunk.append(pair)
    if chunk:
        batches.append(_pad(chunk))
    random.Random(seed).shuffle(batches)
    return batches


# -- model and training --------------------------------------------------------------------


def make_model(vocab_size: int, args: argparse.Namespace) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,  # GQA: 2 query heads share each KV head
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,  # saves vocab x hidden params in a 20 MB budget
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        initializer_range=getattr(args, "init", 0.02),
    )
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config)


def learning_rate(progress: float, peak: float, warmup: float = 0.03, decay: float = 0.3) -> float:
    """Linear warmup, the peak held (the copy circuits extraction needs form late), then a
    cosine decay to 10% of the peak over the last `decay` of the run; `progress`: 0 to 1."""
    if progress < warmup:
        return peak * progress / warmup
    tail = max(0.0, (progress - (1 - decay)) / decay)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, tail)))
    return peak * (0.1 + 0.9 * cosine)


def scored_loss(model: LlamaForCausalLM, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss on the scored positions only (the LM head runs on those alone)."""
    hidden = model.model(input_ids=ids).last_hidden_state  # (B, T, C)
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    logits = model.lm_head(hidden[:, :-1][keep])  # (N, V)
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def train(model: LlamaForCausalLM, batches: Sequence[Batch], args: argparse.Namespace,
          deadline: float, probe: Callable[[], dict[str, float]] | None = None) -> int:
    """Runs `args.steps` steps, or fewer if the clock reaches `deadline` (a `time.time()`)
    first; the schedule follows whichever is further along. Returns the steps taken."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                            weight_decay=0.05)
    start, step = time.time(), 0
    budget = max(deadline - start, 1.0)
    model.train()
    while step < args.steps:
        progress = max(step / args.steps, (time.time() - start) / budget)
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = learning_rate(progress, args.lr)
        ids, labels = batches[step % len(batches)]  # (B, T), (B, T)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = scored_loss(model, ids, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0:
            log.info("step %d loss %.4f lr %.2e %.0fs", step, loss.item(),
                     opt.param_groups[0]["lr"], time.time() - start)
        if probe is not None and args.probe_every and step % args.probe_every == 0:
            model.eval()
            log.info("step %d held-out probe: %s", step, probe())
            model.train()
    return step


def save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """HF checkpoint with bf16 weights (the 20 MB budget) and greedy generation defaults."""
    model.generation_config = GenerationConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=2, do_sample=False
    )
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def held_out_rows(table_rows: Sequence[dict], n_labelled: int, n_invoices: int) -> list[dict]:
    """The first rows of the demo table, per kind: never seen in training."""
    picked = []
    for kind, count in (("review", n_labelled // 2), ("ticket", n_labelled // 2),
                        ("invoice", n_invoices)):
        picked += [row for row in table_rows if row["kind"] == kind][:count]
    return picked


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/demo_model"))
    parser.add_argument("--table", type=Path, default=Path("examples/demo_table.parquet"))
    parser.add_argument("--minutes", type=float, default=18.0, help="wall-clock cap, whole run")
    parser.add_argument("--steps", type=int, default=2300)
    parser.add_argument("--records", type=int, default=60000)
    parser.add_argument("--tokens-per-batch", type=int, default=3072)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-rows", type=int, default=400, help="held-out rows per task")
    parser.add_argument("--probe-every", type=int, default=0,
                        help="steps between quick held-out extract checks (0: none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.time()
    table = demo_data.make_records(3000, demo_data.TABLE_SEED)
    demo_data.write_table(str(args.table))
    examples = build_examples(args.records, args.seed, {row["text"] for row in table})
    texts = ["".join(text for text, _ in example) for example in examples]
    tokenizer = train_tokenizer(texts, args.vocab)
    encoded = encode(tokenizer, examples, 512)
    batches = make_batches(encoded, args.tokens_per_batch, args.seed)
    n_tokens = sum(len(ids) for ids, _ in encoded)
    log.info("%d examples, %d tokens, %d batches, %.0fs", len(examples), n_tokens,
             len(batches), time.time() - began)
    model = make_model(len(tokenizer), args)
    log.info("%.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    probe_rows = held_out_rows(table, 0, 50)
    steps = train(model, batches, args, deadline=began + args.minutes * 60 - SAVE_SECONDS,
                  probe=lambda: evaluate(model, tokenizer, probe_rows))
    save(model, tokenizer, args.out)
    log.info("trained %d steps; total wall time %.1f min", steps, (time.time() - began) / 60)
    reloaded = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    scores = evaluate(reloaded, AutoTokenizer.from_pretrained(args.out),
                      held_out_rows(table, args.eval_rows, args.eval_rows))
    log.info("held-out: %s", scores)


if __name__ == "__main__":
    main()
