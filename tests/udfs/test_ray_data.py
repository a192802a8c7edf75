"""Ray Data (`fw.ray`): on a local cluster started here with `ray.init(num_cpus=2)`, results equal
the pandas accessor's row for row, every input column kept; a killed actor or a killed driver
loses and duplicates nothing. One end-to-end test runs by default; the long ones are `slow`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import flexgen_wrangle as fw

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

LABELS = ["yes", "no"]
TEXTS = ["good", None, "bad", "good", "fine", "terrible", "ok", None, "it broke", "love it",
         "meh", "fine"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU local cluster whose session files live in a temporary directory, removed after."""
    temp_dir = tempfile.mkdtemp(prefix="fwray-")
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                       _temp_dir=temp_dir)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield context
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def llm(wrangle_model_dir):
    """Shipped to the actors as its recipe: fp32 and the engine's default policy, as pandas."""
    with fw.LLM(wrangle_model_dir, progress=False, dtype=torch.float32, policy=None) as model:
        yield model


def _table(texts: list[str | None] = TEXTS) -> pa.Table:
    return pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": texts,
                     "stars": pa.array([row % 5 for row in range(len(texts))], pa.int32())})


def _dataset(table: pa.Table, blocks: int = 4) -> ray.data.Dataset:
    step = -(-table.num_rows // blocks)
    return ray.data.from_arrow([table.slice(start, step)
                                for start in range(0, table.num_rows, step)])


def _rows(ds: ray.data.Dataset) -> pa.Table:
    return pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("id")


def _assert_same(ray_table: pa.Table, frame: pd.DataFrame, columns: list[str]) -> None:
    """Row for row (by id), with the pandas accessor's frame over the same table."""
    theirs_table = pa.Table.from_pandas(frame[columns], preserve_index=False)
    for name in columns:
        ours, theirs = ray_table.column(name).to_pylist(), theirs_table.column(name).to_pylist()
        assert [value is None for value in ours] == [value is None for value in theirs], name
        if pa.types.is_floating(ray_table.schema.field(name).type):
            assert [value for value in ours if value is not None] == pytest.approx(
                [value for value in theirs if value is not None], abs=1e-5)
        else:
            assert ours == theirs, name


def test_classify_on_two_actors_equals_pandas(cluster, llm):
    table = _table()
    ds = _dataset(table)
    out = fw.ray.classify(ds, "text", LABELS, model=llm, into="s", concurrency=2, batch_size=2)
    assert isinstance(out, ray.data.Dataset)
    result = _rows(out)
    assert result.column_names == ["id", "text", "stars", "s", "s_probability"]
    assert result.select(["id", "text", "stars"]).equals(table)  # every input column kept
    expected = table.to_pandas().flexgen.classify("text", LABELS, llm=llm, into="s")
    _assert_same(result, expected, ["s", "s_probability"])
    assert result.column("s").is_null().to_pylist() == [text is None for text in TEXTS]
    stats = fw.ray.stats(out)
    assert stats.rows == len(TEXTS) and stats.null_rows == TEXTS.count(None)
    assert _rows(ds).equals(table)  # the input dataset is untouched


def test_arguments_checked_before_any_actor(cluster, wrangle_model_dir):
    ds = _dataset(_table(), blocks=1)
    with pytest.raises(fw.ColumnNotFoundError, match="body"):
        fw.ray.classify(ds, "body", LABELS, model=wrangle_model_dir)
    with pytest.raises(fw.ColumnTypeError):
        fw.ray.classify(ds, "stars", LABELS, model=wrangle_model_dir)
    with pytest.raises(fw.TemplateError):
        fw.ray.generate(ds, "no fields", model=wrangle_model_dir)
    with pytest.raises(ValueError, match="id_column"):
        fw.ray.classify(ds, "text", LABELS, model=wrangle_model_dir, output="out")
    with pytest.raises(ValueError, match="not a dataset"):
        fw.ray.stats(ds)


def test_actor_defaults_leave_a_cpu_to_ray_data(cluster):
    from udfs.ray_data.planning import actor_memory, actor_resources, actors_on_node

    two = actor_resources(2, None, None, None)
    assert (two.actors, two.num_cpus, two.threads) == (2, 0.5, 1)  # 2 CPUs, 1 kept for Ray
    assert actor_resources(None, None, None, None).actors == 1  # one per node
    assert actor_resources(2, None, None, None, reserved_cpus=2).num_cpus == 0.0
    assert actors_on_node(actor_resources(4, 1, None, None), {"CPU": 2.0}) == 2
    half, whole = actor_memory(None, 2, "cpu", None), actor_memory({"host": "1GiB"}, 1, "cpu", None)
    assert half["disk"] < whole["disk"] and whole["host"] == "1GiB"


class _TaskIds:
    """`ray.get_runtime_context()` answering with a given task id (each process has its own)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    def get_task_id(self) -> str:
        return self.task_id


def _report(sink, keys, batch: pa.Table, task_id: str, monkeypatch) -> None:
    """One actor process running `batch` and reporting it, as `ColumnActor.__call__` does."""
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _TaskIds(task_id))
    stats = fw.RunStats("generate")
    stats.rows = batch.num_rows
    sink.add(keys.key(batch), stats)


def test_stats_keys_count_each_batch_once_whatever_ray_does(monkeypatch):
    from udfs.ray_data.actor import ROW_INDEX, BatchKeys, StatsSink

    def batch(first: int, texts: list[str]) -> pa.Table:
        return pa.table({"text": texts,
                         ROW_INDEX: pa.array(range(first, first + len(texts)), pa.int64())})

    sink, first_actor, second_actor = StatsSink("generate"), BatchKeys(), BatchKeys()
    _report(sink, first_actor, batch(0, ["a", "b"]), "task-1", monkeypatch)
    _report(sink, first_actor, batch(2, ["a", "b"]), "task-1", monkeypatch)  # same values
    _report(sink, second_actor, batch(4, ["a", "b"]), "task-2", monkeypatch)  # on another actor
    restarted = BatchKeys()  # the first actor, killed and restarted: its retry has a new task id
    _report(sink, restarted, batch(0, ["a", "b"]), "task-3", monkeypatch)
    _report(sink, second_actor, batch(2, ["a", "b"]), "task-2", monkeypatch)  # or another actor
    assert sink.total().rows == 6 and sink.retried() == 2
    values_only = StatsSink("generate")  # no row index (an old Ray): a retry still counts once
    _report(values_only, BatchKeys(), pa.table({"text": ["a", "b"]}), "task-1", monkeypatch)
    _report(values_only, BatchKeys(), pa.table({"text": ["a", "b"]}), "task-9", monkeypatch)
    assert values_only.total().rows == 2


def test_package_imports_without_ray():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import flexgen_wrangle as fw\n"
            "try:\n    fw.ray\nexcept ImportError as err:\n    print('needs:', err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=True)
    assert "needs: fw.ray needs Ray Data" in done.stdout


@pytest.mark.slow
def test_extract_and_generate_equal_pandas(cluster, llm):
    table = _table()
    frame = table.to_pandas()
    schema = {"name": "string", "n": "int", "when": "date", "tags": "list[string]"}
    out = _rows(fw.ray.extract(_dataset(table), "text", schema, model=llm, prefix="x_",
                               concurrency=2, batch_size=3, max_string_length=5))
    expected = frame.flexgen.extract("text", schema, llm=llm, prefix="x_", max_string_length=5)
    assert out.schema.field("x_n").type == pa.int64()
    assert out.schema.field("x_when").type == pa.date32()
    assert out.schema.field("x_tags").type == pa.list_(pa.string())
    _assert_same(out, expected, ["x_name", "x_n", "x_when", "x_tags"])
    out = _rows(fw.ray.generate(_dataset(table), "Say {text} ({stars})", model=llm,
                                into="said", concurrency=2, batch_size=3, max_new_tokens=4))
    expected = frame.flexgen.generate("Say {text} ({stars})", llm=llm, into="said",
                                      max_new_tokens=4)
    _assert_same(out, expected, ["said"])
    assert out.column_names == ["id", "text", "stars", "said"]


def _actor_pids() -> list[int]:
    import psutil

    return [proc.pid for proc in psutil.process_iter(["cmdline"])
            if "MapBatches(ColumnActor)" in " ".join(proc.info["cmdline"] or [])]


@pytest.mark.slow
def test_killed_actor_loses_and_duplicates_nothing(cluster, llm):
    texts = [f"row {row} says {'good' if row % 3 else 'bad'}" for row in range(40)]
    table = _table(texts)
    out = fw.ray.generate(_dataset(table, blocks=2), "Echo {text}", model=llm, into="echo",
                          concurrency=2, batch_size=2, max_new_tokens=12)
    results: list[pa.Table] = []
    runner = threading.Thread(target=lambda: results.append(_rows(out)))
    runner.start()
    deadline = time.monotonic() + 120
    while fw.ray.stats(out).rows == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    # Each actor has one task of 10 batches: right after the first batch is reported, killing
    # every actor lands mid-task, so the reported batch is run and reported again on a restart.
    pids = _actor_pids()
    assert pids, "no actor process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    runner.join(timeout=300)
    assert results, "the job did not finish"
    result = results[0]
    assert result.column("id").to_pylist() == list(range(len(texts)))  # none lost, none twice
    expected = table.to_pandas().flexgen.generate("Echo {text}", llm=llm, into="echo",
                                                  max_new_tokens=12)
    _assert_same(result, expected, ["echo"])
    assert ray.get(out._flexgen_stats.retried.remote()) > 0, "no reported batch was retried"
    assert fw.ray.stats(out).rows == len(texts)  # the retried batches are counted once


_DRIVER = textwrap.dedent("""
    import sys, torch, ray, ray.data
    import flexgen_wrangle as fw
    address, model_dir, source, output, backend = sys.argv[1:]
    ray.init(address=address, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.use_datasource_v2 = False  # one block per file (V2 reads small files as one)
    llm = fw.LLM(model_dir, progress=False, dtype=torch.float32, policy=None)
    out = fw.ray.generate(ray.data.read_parquet(source, override_num_blocks=6), "Echo {text}",
                          model=llm, into="echo", max_new_tokens=12, id_column="id",
                          output=output, resume=backend, concurrency=2, batch_size=2)
    print("rows", out.count(), "computed", fw.ray.stats(out).rows, flush=True)
""")


def _driver(cluster, model_dir: Path, source: Path, output: Path, backend: str) -> list[str]:
    return [sys.executable, "-c", _DRIVER, cluster.address_info["address"], str(model_dir),
            str(source), str(output), backend]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ray", "parts"])
def test_killed_driver_rerun_completes_without_duplicates(cluster, llm, tmp_path, backend):
    texts = [f"text {row} {'good' if row % 2 else 'bad'}" for row in range(48)]
    table = _table(texts)
    source = tmp_path / "in"
    source.mkdir()
    for part in range(6):
        pq.write_table(table.slice(part * 8, 8), source / f"part-{part}.parquet")
    output = tmp_path / "out"
    command = _driver(cluster, llm.model_dir, source, output, backend)
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not list(output.glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.02)
    first.kill()
    first.wait()
    written = pq.read_table(sorted(output.glob("*.parquet"))).num_rows
    assert 0 < written < len(texts), "kill the driver mid-job"
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    computed = int(second.stdout.split()[-1])
    assert computed <= len(texts) - written  # the rows already written were skipped
    result = pq.read_table([str(path) for path in output.glob("*.parquet")]).sort_by("id")
    assert result.column("id").to_pylist() == list(range(len(texts)))
    expected = table.to_pandas().flexgen.generate("Echo {text}", llm=llm, into="echo",
                                                  max_new_tokens=12)
    _assert_same(result, expected, ["echo"])


@pytest.mark.slow
def test_cli_ray_option(cluster, llm, tmp_path):
    from flexgen_wrangle.cli import main

    table = _table()
    pq.write_table(table, tmp_path / "in.parquet")
    argv = ["run", str(tmp_path / "in.parquet"), "--column", "text", "--classify", "yes,no",
            "--model", str(llm.model_dir), "--into", "s", "--no-progress"]
    assert main([*argv, "--output", str(tmp_path / "ray.parquet"),
                 "--ray", cluster.address_info["address"]]) == 0
    assert main([*argv, "--output", str(tmp_path / "local.parquet")]) == 0
    ours, theirs = pq.read_table(tmp_path / "ray.parquet"), pq.read_table(tmp_path / "local.parquet")
    assert ours.column("id").to_pylist() == list(range(len(TEXTS)))  # input order
    assert ours.select(["id", "text", "stars", "s"]).equals(theirs.select(["id", "text", "stars",
                                                                             "s"]))
