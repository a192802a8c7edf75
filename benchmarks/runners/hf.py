"""HF transformers `generate`, all weights in memory, in --dtype, greedy, exactly gen_len new ids.

    python -m benchmarks.runners.hf --model DIR --rows 256 --prompt-len 128 --gen-len 32 --batch 32
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from benchmarks.runners.common import (
    Meter,
    base_parser,
    batches,
    build_result,
    emit,
    prompts_for,
    setup_torch,
    warmup_prompts,
)


def generation_config(model: PreTrainedModel, gen_len: int) -> GenerationConfig:
    """Greedy; min_new_tokens == max_new_tokens so EOS never ends a row early."""
    pad_id = model.config.pad_token_id
    if pad_id is None:
        pad_id = model.config.eos_token_id
    return GenerationConfig(
        max_new_tokens=gen_len,
        min_new_tokens=gen_len,
        do_sample=False,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=model.config.eos_token_id,
    )


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (input_ids [B, T], attention_mask [B, T]); rows of unequal length padded on the left."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row_idx, row in enumerate(rows):
        ids[row_idx, width - len(row) :] = torch.tensor(row)
        mask[row_idx, width - len(row) :] = 1
    return ids, mask


@torch.inference_mode()
def generate_all(
    model: PreTrainedModel, prompts: list[list[int]], batch_size: int, gen_len: int, device: str
) -> list[list[int]]:
    """Generated ids only, one list per prompt, in input order."""
    config = generation_config(model, gen_len)
    outputs: list[list[int]] = []
    for batch in batches(prompts, batch_size):
        ids, mask = left_pad(batch, config.pad_token_id)
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )  # [B, T + gen_len]
        outputs.extend(out[:, ids.shape[1] :].tolist())
    return outputs


def load_model(args: argparse.Namespace) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    return model.to(args.device).eval()


def sync_for(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def run(args: argparse.Namespace) -> dict:
    setup_torch(args)
    prompts = prompts_for(args)
    meter = Meter()
    with meter.phase("load", sync_for(args.device)):
        model = load_model(args)
    if args.warmup_tokens:
        with meter.phase("warmup", sync_for(args.device)):
            warm = warmup_prompts(prompts, args.warmup_rows)
            generate_all(model, warm, args.batch, args.warmup_tokens, args.device)
    with meter.phase("generate", sync_for(args.device)):
        outputs = generate_all(model, prompts, args.batch, args.gen_len, args.device)
    return build_result(args, "hf", prompts, outputs, meter, {"batch": args.batch})


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, required=True)
    emit(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
