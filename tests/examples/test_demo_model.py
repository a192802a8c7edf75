"""The shipped demo model and demo data: deterministic generator, loadable checkpoint within
budget, and held-out accuracy measured with HF transformers (independent of the engine)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `examples` is a top-level folder, not an installed package
    sys.path.insert(0, str(ROOT))

from examples import demo_data  # noqa: E402
from examples.demo_tasks import evaluate  # noqa: E402

MODEL_DIR = ROOT / "examples" / "demo_model"
TABLE = ROOT / "examples" / "demo_table.parquet"
MAX_BYTES = 20 * 1024 * 1024
HELD_OUT_PER_TASK = 200


def test_demo_data_is_deterministic_per_seed() -> None:
    first = demo_data.make_records(300, seed=7)
    assert first == demo_data.make_records(300, seed=7)
    assert first != demo_data.make_records(300, seed=8)
    assert {row["kind"] for row in first} == set(demo_data.KINDS)


def test_rows_have_answers_only_where_they_apply() -> None:
    for row in demo_data.make_records(300, seed=3):
        is_invoice = row["kind"] == "invoice"
        assert (row["label"] is None) == is_invoice
        assert all((row[field] is None) != is_invoice for field in demo_data.INVOICE_SCHEMA)
        if is_invoice:
            assert row["currency"] in ("USD", "EUR", "GBP")
            assert round(row["total"], 2) == row["total"]


def test_bundled_table_is_the_seeded_table() -> None:
    pd = pytest.importorskip("pandas")
    shipped = pd.read_parquet(TABLE)
    expected = demo_data.make_table()
    assert list(shipped.columns) == list(demo_data.COLUMNS)
    assert 2000 <= len(shipped) <= 4000
    assert shipped["text"].tolist() == expected["text"].tolist()
    assert shipped["label"].fillna("").tolist() == expected["label"].fillna("").tolist()


def test_checkpoint_fits_the_budget() -> None:
    files = {path.name for path in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= files
    assert sum(path.stat().st_size for path in MODEL_DIR.iterdir()) <= MAX_BYTES


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[object, object]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    return model.eval(), tokenizer


def test_tokenizer_round_trips_and_marks_sequences(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    text = "Invoice from Acme Inc.\nDate: 2024-01-02\nTotal: €1,234.50"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None


@pytest.fixture(scope="module")
def held_out_scores(model_and_tokenizer) -> dict:
    model, tokenizer = model_and_tokenizer
    rows = demo_data.make_records(3000, demo_data.TABLE_SEED)  # never seen in training
    picked = [row for row in rows if row["kind"] == "review"][: HELD_OUT_PER_TASK // 2]
    picked += [row for row in rows if row["kind"] == "ticket"][: HELD_OUT_PER_TASK // 2]
    picked += [row for row in rows if row["kind"] == "invoice"][:HELD_OUT_PER_TASK]
    scores = evaluate(model, tokenizer, picked)
    assert scores["classify_rows"] == scores["extract_rows"] == HELD_OUT_PER_TASK
    return scores


def test_held_out_classify_accuracy(held_out_scores) -> None:
    assert held_out_scores["classify_accuracy"] >= 0.95, held_out_scores


def test_held_out_extract_accuracy(held_out_scores) -> None:
    assert held_out_scores["extract_exact"] >= 0.90, held_out_scores
