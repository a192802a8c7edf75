"""Workload 3's column-pipeline runner: the word-per-id tokenizer round-trips the workload's ids,
and both modes return every row with the same generated ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from benchmarks.runners.pipeline import main
from benchmarks.word_tokenizer import ensure_word_tokenizer, ids_to_text
from tests.models import build_model


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = build_model(tmp_path_factory.mktemp("opt-words"), "opt")
    ensure_word_tokenizer(model_dir)
    return model_dir


def test_word_tokenizer_round_trips_ids(opt_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(opt_dir)
    config = json.loads((opt_dir / "config.json").read_text())
    ids = [4, 17, config["vocab_size"] - 1, 5, 4]
    assert tokenizer(ids_to_text(ids), add_special_tokens=False)["input_ids"] == ids
    bos = config["bos_token_id"]
    assert tokenizer(ids_to_text(ids))["input_ids"] == [bos, *ids]


def run_mode(opt_dir: Path, mode: str, capsys: pytest.CaptureFixture) -> dict:
    main(["--model", str(opt_dir), "--rows", "24", "--prompts", "wrangling", "--prefix-len", "12",
          "--prompt-len", "18", "--gen-len", "3", "--mode", mode, "--threads", "1", "--dtype", "float32"])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_pipeline_and_plain_modes_agree(opt_dir: Path, capsys: pytest.CaptureFixture) -> None:
    plain, piped = run_mode(opt_dir, "plain", capsys), run_mode(opt_dir, "pipeline", capsys)
    assert plain["tokens_ok"] and piped["tokens_ok"]
    assert plain["outputs_sha"] == piped["outputs_sha"]  # fp32 tiny model: same ids either way
    shared = piped["pipeline_stats"]["prompt_tokens"]
    assert shared < plain["pipeline_stats"]["prompt_tokens"]  # the prefix ran once
