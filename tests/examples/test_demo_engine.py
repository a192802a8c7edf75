"""The shipped demo model through our engine and the `fw.LLM` tasks: held-out accuracy under
the default placement, with every weight on disk and with 4-bit weights and KV cache (the same
within one point), and generated text equal to HF transformers' greedy output."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `examples` is a top-level folder, not an installed package
    sys.path.insert(0, str(ROOT))

from engine import Placement, Policy  # noqa: E402
from examples import demo_data  # noqa: E402
from examples.demo_tasks import extract_prompt, greedy_complete, value_hits  # noqa: E402
from flexgen_wrangle import LLM  # noqa: E402

MODEL_DIR = ROOT / "examples" / "demo_model"
ROWS_PER_TASK = 200  # one point = two rows
POLICIES = {
    "device": Policy(gpu_batch_size=32, num_gpu_batches=2),
    "disk-weights": Policy(gpu_batch_size=32, num_gpu_batches=2, weights=Placement.on("disk")),
    "4-bit": Policy(gpu_batch_size=32, num_gpu_batches=2, compress_weights=True,
                    compress_cache=True),
}


@pytest.fixture(scope="module")
def held_out() -> dict[str, list[dict]]:
    """The first rows of each kind of the demo table (never seen in training)."""
    rows = demo_data.make_records(3000, demo_data.TABLE_SEED)
    return {kind: [row for row in rows if row["kind"] == kind][:count]
            for kind, count in (("review", ROWS_PER_TASK // 2), ("ticket", ROWS_PER_TASK // 2),
                                ("invoice", ROWS_PER_TASK))}


def accuracy(llm: LLM, held_out: dict[str, list[dict]]) -> dict[str, float]:
    hits = 0
    for kind, labels in (("review", demo_data.SENTIMENT_LABELS),
                         ("ticket", demo_data.CATEGORY_LABELS)):
        rows = held_out[kind]
        out = llm.classify([row["text"] for row in rows], list(labels)).to_pylist()
        hits += sum(got["label"] == row["label"] for got, row in zip(out, rows, strict=True))
    invoices = held_out["invoice"]
    out = llm.extract([row["text"] for row in invoices], demo_data.INVOICE_SCHEMA).to_pylist()
    exact = sum(got is not None and all(value_hits(got, row).values())
                for got, row in zip(out, invoices, strict=True))
    return {"classify": hits / ROWS_PER_TASK, "extract": exact / ROWS_PER_TASK}


@pytest.fixture(scope="module")
def scores(held_out) -> dict[str, dict[str, float]]:
    found = {}
    for name, policy in POLICIES.items():
        with LLM.demo(policy=policy, dtype=torch.float32, progress=False) as llm:
            found[name] = accuracy(llm, held_out)
    return found


def test_held_out_accuracy_through_the_engine(scores) -> None:
    assert scores["device"]["classify"] >= 0.95, scores
    assert scores["device"]["extract"] >= 0.90, scores


@pytest.mark.parametrize("name", ["disk-weights", "4-bit"])
def test_accuracy_holds_offloaded_and_compressed(scores, name: str) -> None:
    for task in ("classify", "extract"):
        assert abs(scores[name][task] - scores["device"][task]) <= 0.01 + 1e-9, scores


def test_generated_text_equals_hf_greedy(held_out) -> None:
    """Free generation (no grammar) after extract prompts: our engine and HF, token for token."""
    prompts = [extract_prompt(row["text"]) for row in held_out["invoice"][:6]]
    prompts += [row["text"][:60] for row in held_out["review"][:3]]
    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    expected = greedy_complete(model.eval(), tokenizer, prompts, max_new_tokens=40, batch_size=1)
    with LLM.demo(policy=POLICIES["disk-weights"], dtype=torch.float32, progress=False) as llm:
        got = llm.generate(prompts, max_new_tokens=40).to_pylist()
    assert got == expected
