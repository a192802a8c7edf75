"""The scripts in examples/: the ETL run over a Parquet file (and its resume), and pointing the
table API at another local checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def run_etl(work: Path, rows: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(work), "ROWS": str(rows)}
    return subprocess.run(["bash", str(ROOT / "examples" / "etl_invoices.sh")], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_etl_script_writes_typed_fields_and_resumes(tmp_path: Path) -> None:
    first = run_etl(tmp_path, rows=10)
    assert first.returncode == 0, first.stderr
    out = pd.read_parquet(tmp_path / "invoice_fields.parquet")
    assert len(out) == 10
    assert {"id", "text", "vendor", "total", "date", "currency"} <= set(out.columns)
    assert out["total"].dtype.kind == "f"
    again = run_etl(tmp_path, rows=10)  # everything written already: resumes, same result
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "invoice_fields.parquet"), out)


def test_local_checkpoint_script_runs_on_any_hf_directory(wrangle_model_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "local_checkpoint.py"), str(wrangle_model_dir),
         "--rows", "3", "--memory", "device=64MiB,host=1GiB"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "plan: Policy(" in done.stdout
