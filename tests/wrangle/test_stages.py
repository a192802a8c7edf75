"""`flexgen-wrangle run --stages N` (and so `fw.LLM(stages=N)`): the same table as one process."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flexgen_wrangle import cli

TEXTS = ["good", None, "bad", "good", "fine", "awful", "ok"]


@pytest.mark.slow  # stage processes cost seconds to start; tests/engine/distributed has the rest
def test_run_with_two_stages_writes_the_single_process_table(wrangle_model_dir, tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), source)
    tables = []
    for stages in ("1", "2"):
        out = tmp_path / f"out-{stages}.parquet"
        argv = ["run", str(source), "--column", "text", "--model", str(wrangle_model_dir),
                "--output", str(out), "--block-rows", "4", "--no-progress", "--classify",
                "yes,no", "--stages", stages]
        assert cli.main(argv) == 0
        tables.append(pq.read_table(out))
    single, staged = tables
    assert staged.column("text_label").to_pylist() == single.column("text_label").to_pylist()
    for got, want in zip(staged.column("text_label_probability").to_pylist(),
                         single.column("text_label_probability").to_pylist(), strict=True):
        assert (got is None) == (want is None)
        assert got is None or abs(got - want) < 1e-3


def test_grammar_processor_pickles_into_an_equal_one(wrangle_llm):
    """What lets fw.extract run with stages: its constrained decoding travels to the last
    stage. The rebuilt processor masks the same tokens as the original at every step."""
    import pickle

    import torch

    task = wrangle_llm.extract_task({"name": "string", "n": "int"})
    original = task._constraints.processor(task._grammar)
    rebuilt = pickle.loads(pickle.dumps(original))
    vocab = task._constraints.vocab_size
    generated: list[int] = []
    for _ in range(6):
        logits = torch.randn(vocab, generator=torch.Generator().manual_seed(len(generated)))
        want = original(0, generated, logits.clone())
        got = rebuilt(0, generated, logits.clone())
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        generated.append(int(want.argmax()))


@pytest.mark.slow  # starts two stage processes
def test_extract_with_two_stages_equals_one(wrangle_model_dir):
    import torch

    import flexgen_wrangle as fw

    texts = ["Invoice from Acme Ltd, total $12.50.", None, "Paid 3 euros to Bob."]
    schema = {"vendor": "string", "total": "float"}
    results = []
    for stages in (1, 2):
        with fw.LLM(wrangle_model_dir, dtype=torch.float32, progress=False,
                    stages=stages) as llm:
            results.append(fw.extract(texts, schema, llm=llm, max_string_length=6).to_pylist())
    assert results[1] == results[0]


def test_auto_stages_are_planned_for_the_column(wrangle_model_dir, monkeypatch):
    """fw.LLM(stages=N) hands the column's workload to the stages (each plans its layers for
    it), not the engine's nominal one."""
    import flexgen_wrangle as fw
    from flexgen_wrangle import llm as llm_module

    built = {}

    class BuiltError(Exception):
        pass

    def capture(model_dir, **options):
        built.update(options)
        raise BuiltError

    monkeypatch.setattr(llm_module.Engine, "from_pretrained", capture)
    llm = fw.LLM(wrangle_model_dir, progress=False, stages=2)
    with pytest.raises(BuiltError):
        llm.classify(["good", "bad", "fine"], ["yes", "no"])
    assert built["stages"] == 2 and built["policy"] == "auto"
    assert built["workload"] is not None and built["workload"].gen_len >= 1
    assert set(built["workload"].prompt_len) and built["workload"].rows >= 3
