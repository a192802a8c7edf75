"""Memory pressure: budgets that cannot hold one row, given by hand or by a cgroup cap below
what the plan needs. The planner / engine refuses before loading anything, naming the tier and
the minimum it needs; the process exits with that message, never OOM-killed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import LlamaConfig

from benchmarks.memcap import memory_cap, own_memory_cgroup
from engine import Engine, MemoryBudgetError
from flexgen_wrangle import cli

ROOT = Path(__file__).resolve().parents[2]
CAP = 1 << 30  # 1 GiB: the interpreter and torch fit, a 7B-shaped layer does not
MIN_RE = r"no placement fits even one row: the device tier needs at least [0-9.]+ [KMG]iB"


@pytest.fixture(scope="module")
def big_config_only(tmp_path_factory) -> Path:
    """A Llama-2-7B-shaped config.json and no weights: any attempt to load them would fail
    with a missing-file error, so a refusal with numbers proves it came before loading."""
    config = LlamaConfig(vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                         intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)
    config.architectures = ["LlamaForCausalLM"]
    out = tmp_path_factory.mktemp("llama-7b-config")
    config.save_pretrained(out)
    return out


def test_a_budget_below_one_row_refuses_before_loading(big_config_only, tmp_path):
    with pytest.raises(MemoryBudgetError, match=MIN_RE + r".*budget is 64.0 MiB"):
        Engine.from_pretrained(big_config_only, memory={"device": "64MiB", "host": "64MiB"},
                               offload_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # no offload directory made


def test_run_with_a_budget_below_one_row(wrangle_model_dir, tmp_path, monkeypatch, capsys):
    """The column's own minimum (its rows and tokens), not a nominal workload's."""
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"text": ["good day", "bad day"]}), source)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the offload dir would go
    argv = ["run", str(source), "--column", "text", "--classify", "yes,no", "--model",
            str(wrangle_model_dir), "--output", str(out), "--memory", "device=16KiB,host=16KiB",
            "--no-progress"]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    prompt_tokens = re.search(r"one row of (\d+) \+ \d+ tokens", error)
    assert prompt_tokens and int(prompt_tokens.group(1)) < 32, error  # the column's own rows
    assert "its budget is 16.0 KiB" in error
    assert "--memory" in error and "--resume" in error
    assert not out.exists() and not list(tmp_path.glob("flexgen-*"))


needs_cgroup = pytest.mark.skipif(
    own_memory_cgroup() is None or not os.access(str(own_memory_cgroup() or "/"), os.W_OK),
    reason="no writable cgroup v1 memory controller")

CHILD = """
import sys
from engine import Engine, MemoryBudgetError
from flexgen_wrangle import cli
model = sys.argv[1]
code = cli.main(["plan", "--model", model, "--rows", "1000", "--prompt-len", "64",
                 "--gen-len", "16"])
print("plan exit", code, flush=True)
try:
    Engine.from_pretrained(model)
except MemoryBudgetError as err:
    print("engine:", err)
    sys.exit(3)
"""


@needs_cgroup
def test_a_cgroup_cap_below_the_plan_is_refused_not_oom_killed(big_config_only):
    """`flexgen-wrangle plan` and an engine with default budgets, in a 1 GiB memory cgroup,
    on a 7B-shaped model: both read the cap, refuse with the minimum, and exit normally
    (uncapped, the same plan succeeds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with memory_cap(CAP, "memory-pressure") as cap:
        if cap.path is None:
            pytest.skip(cap.warning or "memory cap not applied")
        done = subprocess.run([sys.executable, "-c", CHILD, str(big_config_only)],
                              capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
                              preexec_fn=cap.preexec())
        usage = cap.usage()
    assert done.returncode == 3, (done.returncode, usage, done.stderr[-2000:])
    assert usage.get("oom_kills", 0) == 0, usage
    assert "plan exit 2" in done.stdout
    assert re.search(MIN_RE + r".*its budget is", done.stderr), done.stderr[-2000:]
    assert re.search(r"engine: .*needs at least .*budget", done.stdout), done.stdout
    assert "Traceback" not in done.stdout + done.stderr
