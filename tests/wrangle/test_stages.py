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
