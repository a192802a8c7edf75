"""Point flexgen-wrangle at a real local checkpoint: any OPT or Llama-family (Llama 2/3,
Mistral, Qwen2) Hugging Face directory with config.json, safetensors or .bin weights and a
tokenizer. Nothing is downloaded.

    python examples/local_checkpoint.py /models/Llama-3.2-1B-Instruct \
        [--memory device=4GiB,host=16GiB,disk=200GiB] [--rows 200]

The engine is planned for the table and the memory you give: weights, KV cache and activations
that do not fit the device tier go to host RAM, then to disk (`--memory` caps each tier).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import flexgen_wrangle as fw

DEMO_TABLE = Path(__file__).resolve().parent / "demo_table.parquet"
SCHEMA = {"vendor": "string", "total": "float", "currency": "string", "date": "date"}


def parse_memory(text: str | None) -> dict[str, str] | None:
    """`device=4GiB,host=16GiB` -> {"device": "4GiB", "host": "16GiB"}."""
    if not text:
        return None
    return dict(part.split("=", 1) for part in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a local HF checkpoint directory")
    parser.add_argument("--memory", default=None, help="device=4GiB,host=16GiB,disk=200GiB")
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args(argv)

    table = pd.read_parquet(DEMO_TABLE)
    reviews = table[table["kind"] == "review"].head(args.rows)
    invoices = table[table["kind"] == "invoice"].head(args.rows)
    with fw.LLM(args.model, memory=parse_memory(args.memory)) as llm:
        labelled = reviews.flexgen.classify("text", labels=["positive", "negative", "neutral"],
                                            llm=llm, into="sentiment")
        print(labelled[["text", "sentiment", "sentiment_probability"]].head(5).to_string())
        print(llm.last_stats.summary())
        fields = invoices.flexgen.extract("text", SCHEMA, llm=llm, prefix="got_")
        print(fields[["text", *[f"got_{name}" for name in SCHEMA]]].head(5).to_string())
        print(llm.last_stats.summary())
        print(f"plan: {llm.plan_text}")


if __name__ == "__main__":
    main()
