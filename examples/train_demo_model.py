"""Train the project's own demo model on CPU: a byte-level BPE tokenizer and a small Llama.

    python -m examples.train_demo_model --out examples/demo_model [--minutes 18]

The corpus comes from `examples.demo_data` (seed A, rows of the demo table removed), formatted
with exactly the `flexgen_wrangle.prompts` formats (see `examples.demo_tasks`). The loss covers
the answer + EOS of task examples and the whole of plain documents. Fixed seeds and a fixed
step count make runs reproducible; `--minutes` is a safety cap: when the wall clock gets
ahead of the step count, the learning-rate schedule follows the clock so the run still ends
annealed inside the budget (and is then no longer bit-reproducible).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import time
from collections.abc import Sequence
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
    evaluate,
    extract_example,
)

log = logging.getLogger("train_demo_model")

TRAIN_SEED = 0  # seed A; the demo table uses demo_data.TABLE_SEED
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")  # ids 0, 1, 2
IGNORE = -100  # label id the loss skips
SAVE_SECONDS = 20.0  # kept back from the --minutes budget for saving the checkpoint
Batch = tuple[torch.Tensor, torch.Tensor]


# -- corpus --------------------------------------------------------------------------------


def build_examples(n_records: int, seed: int, exclude: set[str],
                   weights: Sequence[float] = (0.25, 0.25, 0.5),
                   plain_share: float = 0.15) -> list[Example]:
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
        else:
            examples.append(classify_example(rng, row, pools[row["kind"]]))
        if rng.random() < plain_share:
            examples.append([(row["text"], True)])
    rng.shuffle(examples)
    return examples


# -- tokenizer -----------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE. Newlines and digits are single pre-tokens: numbers copy digit by digit,
    and a prompt tokenizes the same whole or split at a line break (prefix sharing). A space
    before a capital is its own token, so `from Acme` and `"vendor":"Acme"` share `Acme`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Split(Regex(" (?=[A-Z])"), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
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
    """(ids, labels) per example: BOS + segments + EOS; scored segments and EOS keep their
    ids as labels, the rest are IGNORE. Segments split at pre-token boundaries, so this is
    the same tokenization as of the joined text."""
    flat = [text for example in examples for text, _ in example]
    flat_ids = iter(tokenizer(flat, add_special_tokens=False)["input_ids"])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    encoded = []
    for example in examples:
        ids, labels = [bos], [IGNORE]
        for _, scored in example:
            segment_ids = next(flat_ids)
            ids += segment_ids
            labels += segment_ids if scored else [IGNORE] * len(segment_ids)
        ids.append(eos)
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


def learning_rate(progress: float, peak: float, warmup: float = 0.03) -> float:
    """Linear warmup, cosine decay to 10% of the peak; `progress` runs from 0 to 1."""
    if progress < warmup:
        return peak * progress / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))
    return peak * (0.1 + 0.9 * cosine)


def scored_loss(model: LlamaForCausalLM, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss on the scored positions only (the LM head runs on those alone)."""
    hidden = model.model(input_ids=ids).last_hidden_state  # (B, T, C)
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    logits = model.lm_head(hidden[:, :-1][keep])  # (N, V)
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def train(model: LlamaForCausalLM, batches: Sequence[Batch], args: argparse.Namespace,
          deadline: float) -> int:
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
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--records", type=int, default=60000)
    parser.add_argument("--tokens-per-batch", type=int, default=3072)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-rows", type=int, default=400, help="held-out rows per task")
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
    steps = train(model, batches, args, deadline=began + args.minutes * 60 - SAVE_SECONDS)
    save(model, tokenizer, args.out)
    log.info("trained %d steps; total wall time %.1f min", steps, (time.time() - began) / 60)
    reloaded = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    scores = evaluate(reloaded, AutoTokenizer.from_pretrained(args.out),
                      held_out_rows(table, args.eval_rows, args.eval_rows))
    log.info("held-out: %s", scores)


if __name__ == "__main__":
    main()
