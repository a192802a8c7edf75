"""`StagedEngine`: N stage processes on this machine behind the `Engine` API.

The caller's process holds no layers: it validates the call, sends the same command to every
stage over a pipe, and returns the last stage's answer. Stages meet in a gloo (or NCCL) group
through a TCP store this process hosts on a free localhost port. Every stage's offload
directory lives inside one this process owns. A stage that dies or fails ends the call with a
`StageError` naming it; every stage process is then stopped, that directory removed, and the
engine closed. Calls from several threads take turns.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection as mp_connection
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from engine.config import ModelConfig
from engine.consumers import Scorer
from engine.defaults import resolve_device
from engine.distributed.split import StageSlice, stage_slices
from engine.distributed.stats import PipelineStats
from engine.model import layer_specs
from engine.policy.policy import Policy
from engine.sampling import SamplingParams
from engine.storage.offload_dirs import make_offload_dir
from engine.validation import validate_prompts

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0  # any one transfer or collective (a hung peer); a dead one is seen at once
STOP_GRACE_S = 3.0  # a stage asked to stop gets this long before it is killed
ROOT_CAUSE_GRACE_S = 1.0  # after a first failure, how long to look for the stage that caused it


class StageError(RuntimeError):
    """A pipeline stage died or failed; the engine is closed. `remote_traceback`: the stage's."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback
        if remote_traceback:  # shown under the caller's own traceback
            self.add_note(f"the stage's traceback:\n{remote_traceback.rstrip()}")


def _exit_text(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


def _start_stage(preexec: Callable[[], None] | None) -> tuple[subprocess.Popen, Connection]:
    """A fresh interpreter running `engine.distributed.worker`, and a pipe to it (a socket
    pair). Not multiprocessing's spawn: that re-imports the caller's main module, which a
    script without a `__main__` guard cannot survive."""
    parent_end, child_end = socket.socketpair()
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.distributed.worker", str(child_end.fileno())],
        pass_fds=[child_end.fileno()], env=env, stdin=subprocess.DEVNULL, preexec_fn=preexec)
    child_end.close()
    return proc, Connection(parent_end.detach())


def per_stage(value: Any, stages: int, what: str) -> list:
    """A value for every stage: one value for all, or a list with one per stage."""
    if not isinstance(value, list | tuple):
        return [value] * stages
    if len(value) != stages:
        raise ValueError(f"{what} has {len(value)} entries for {stages} stages; give one per "
                         f"stage, or one for all")
    return list(value)


def _check_shapes(policies: list) -> None:
    """GPU batches are cut the same way on every stage: given policies must agree on it."""
    given = [policy for policy in policies if isinstance(policy, Policy)]
    if given and len(given) < len(policies):
        raise ValueError("give a Policy for every stage, or let every stage plan ('auto')")
    shapes = sorted({(policy.gpu_batch_size, policy.num_gpu_batches) for policy in given})
    if len(shapes) > 1:
        raise ValueError(f"the stages' policies must share one block shape (gpu_batch_size, "
                         f"num_gpu_batches); got {shapes}")


def _stop(procs: list, conns: list, stages_dir: Path) -> None:
    """Stop every stage process still running, then remove the directory all their offload
    files live in."""
    for conn in conns:
        conn.close()
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(stages_dir, ignore_errors=True)


class StagedEngine:
    """Use `Engine.from_pretrained(model_dir, stages=N)`; close with `close()` or `with`."""

    def __init__(self, cfg: ModelConfig, slices: list[StageSlice], procs: list, conns: list,
                 store: Any, stages_dir: Path) -> None:
        self.config, self.slices = cfg, slices
        self._procs, self._conns, self._store = procs, conns, store
        self._finalizer = weakref.finalize(self, _stop, procs, conns, stages_dir)
        self.offload_dir = stages_dir  # every stage's offload directory is inside it
        self._lock = threading.Lock()  # one call at a time: the pipes carry one conversation
        self.policies: list = []
        self.offload_dirs: list[Path] = []
        self._final_stats: PipelineStats | None = None
        self._totals = {"total_s": 0.0, "prompt_tokens": 0, "generated_tokens": 0}

    @classmethod
    def spawn(cls, model_dir: str | Path, stages: int, policy=None, device=None, dtype=None,
              offload_dir=None, memory=None, progress: bool = False,
              allow_compression: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
              threads: int | None = None, workload=None,
              preexec_of: Callable[[int], Callable[[], None] | None] | None = None,
              ) -> StagedEngine:
        """Start the stage processes and wait until each has placed its layers. `threads`:
        torch threads per stage (default: this process's divided among the stages);
        `preexec_of(rank)`: a function for stage `rank`'s process to run before it starts
        Python (e.g. joining a memory cgroup, so that all of it is counted); `workload` (an
        `engine.Workload`): what policy="auto" plans each stage for."""
        cfg = ModelConfig.from_pretrained(model_dir)
        slices = stage_slices(layer_specs(cfg), stages)
        device = resolve_device(device)
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        backend = "nccl" if gpus >= stages else "gloo"
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=timeout_s))
        threads = threads or max(1, torch.get_num_threads() // stages)
        # every stage's offload directory goes inside this one, which this process owns: it is
        # removed with the stages, whatever they were doing (or by the next engine, should
        # this process die)
        stages_dir = make_offload_dir(Path(offload_dir) if offload_dir is not None else None)
        policies, memories = per_stage(policy, stages, "policy"), per_stage(memory, stages, "memory")
        _check_shapes(policies)

        def options_of(rank: int) -> dict:
            stage_device = f"cuda:{rank % gpus}" if gpus else (
                None if device.type == "cpu" else str(device))
            return {"model_dir": str(model_dir), "policy": policies[rank],
                    "device": stage_device, "dtype": dtype, "offload_dir": str(stages_dir),
                    "memory": memories[rank], "progress": progress,
                    "allow_compression": allow_compression, "backend": backend,
                    "timeout_s": timeout_s, "threads": threads, "workload": workload}

        procs, conns = [], []
        try:
            cls._start_all(procs, conns, stages, store.port, options_of, preexec_of)
        except BaseException:
            _stop(procs, conns, stages_dir)
            raise
        engine = cls(cfg, slices, procs, conns, store, stages_dir)
        infos = engine._collect("loading its layers")
        engine.policies = [info["policy"] for info in infos]
        engine.offload_dirs = [Path(info["offload_dir"]) for info in infos]
        return engine

    @staticmethod
    def _start_all(procs: list, conns: list, stages: int, port: int, options_of,
                   preexec_of) -> None:
        for rank in range(stages):
            proc, conn = _start_stage(preexec_of(rank) if preexec_of is not None else None)
            procs.append(proc)
            conns.append(conn)
            conn.send((rank, stages, port, os.getpid(), options_of(rank)))

    # lifecycle ---------------------------------------------------------------------------
    @property
    def policy(self):
        """The first stage's policy (every stage cuts the same blocks; `policies` has all)."""
        return self.policies[0]

    @property
    def pids(self) -> list[int]:
        """The stage processes' ids (for tests and monitoring; the API never needs them)."""
        return [proc.pid for proc in self._procs]

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._final_stats = self.stats
            self._command("close", ())
        except StageError as err:
            logger.warning("closing the stages: %s", err)
        finally:
            self._finalizer()

    def __enter__(self) -> StagedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the Engine API ------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None,
                 prefix: list[int] | None = None) -> list[list[int]]:
        params = params or SamplingParams()
        self._validate(prompts, params.max_new_tokens, prefix)
        try:
            pickle.dumps(params)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise TypeError(
                f"with stages, SamplingParams travel to the last stage's process and must "
                f"pickle: {err}. Use a module-level logits_processor, or stages=1") from err
        outputs = self._timed("generate", (prompts, params, prefix), prompts, prefix)
        self._totals["generated_tokens"] += sum(len(out) for out in outputs)
        return outputs

    def score(self, prompts: list[list[int]], candidates: list[list[int]],
              prefix: list[int] | None = None) -> list[list[float]]:
        if not candidates or any(len(candidate) == 0 for candidate in candidates):
            raise ValueError("candidates must be a non-empty list of non-empty token-id lists")
        validate_prompts(candidates, self.config, 0, what="candidate")
        self._validate(prompts, Scorer(candidates).extra_cols(), prefix)
        return self._timed("score", (prompts, candidates, prefix), prompts, prefix)

    @property
    def stats(self) -> PipelineStats:
        if self.closed:
            return self._final_stats or PipelineStats()
        return PipelineStats.gather(self._command("stats", ()), **self._totals)

    def _validate(self, prompts, extra_cols: int, prefix: list[int] | None) -> None:
        if self.closed:
            raise RuntimeError("this Engine is closed")
        prefix = list(prefix or [])
        validate_prompts(prompts, self.config, extra_cols + len(prefix))
        if prefix:
            validate_prompts([prefix], self.config, 0, what="prefix")

    def _timed(self, command: str, args: tuple, prompts, prefix) -> Any:
        if not prompts:
            return []
        begin = time.perf_counter()
        value = self._command(command, args)[-1]
        self._totals["total_s"] += time.perf_counter() - begin
        self._totals["prompt_tokens"] += sum(len(p) for p in prompts) + len(prefix or [])
        return value

    # talking to the stages -----------------------------------------------------------------
    def _command(self, command: str, args: tuple) -> list:
        """Every stage's answer to `command`. An interrupted call (Ctrl-C) cannot be taken
        back from the stages mid-schedule: it stops them, and the engine is closed."""
        with self._lock:
            if self.closed:
                raise RuntimeError("this Engine is closed")
            try:
                for rank, conn in enumerate(self._conns):
                    try:
                        conn.send((command, args))
                    except (BrokenPipeError, ConnectionResetError, EOFError):
                        self._fail(rank, f"during {command}", {})
                return self._collect(f"during {command}")
            except BaseException as err:
                if not isinstance(err, StageError):
                    self._finalizer()
                raise

    def _collect(self, doing: str) -> list:
        """Each stage's answer, in rank order; the first death or error fails the call."""
        answers: dict[int, Any] = {}
        while len(answers) < len(self._procs):
            rank, answer = self._next_answer(answers)
            if answer is None or answer[0] != "ok":
                self._fail(rank, doing, {rank: answer})
            answers[rank] = answer[1]
        return [answers[rank] for rank in range(len(self._procs))]

    def _next_answer(self, answers: dict) -> tuple[int, tuple | None]:
        """(rank, answer) of the next stage to answer; answer None: the stage died (its end
        of the pipe closed)."""
        waiting = {self._conns[rank]: rank for rank in range(len(self._procs))
                   if rank not in answers}
        conn = mp_connection.wait(list(waiting))[0]
        rank = waiting[conn]
        try:
            return rank, conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._procs[rank].wait(1.0)
            return rank, None

    def _fail(self, rank: int, doing: str, seen: dict) -> None:
        """Name the stage that caused the failure (one that died beats one that reported a
        lost link), stop every stage, close, raise."""
        deadline = time.monotonic() + ROOT_CAUSE_GRACE_S
        consequence = any(answer is not None and answer[1].startswith("StageLinkError")
                          for answer in seen.values())
        while consequence and time.monotonic() < deadline and None not in seen.values():
            for other in range(len(self._procs)):
                if other not in seen and self._procs[other].poll() is not None:
                    seen[other] = None
            time.sleep(0.05)
        dead = [r for r, answer in seen.items() if answer is None]
        culprit = dead[0] if dead else rank
        answer = seen.get(culprit)
        self._finalizer()  # stops the stages, removes the offload files of the dead
        where = self.slices[culprit].describe()
        pid = self._procs[culprit].pid
        if answer is None:
            code = self._procs[culprit].returncode
            raise StageError(
                f"{where}, pid {pid}, {_exit_text(code)} {doing}; every stage was stopped and "
                f"the engine closed (its offload files removed). Build a new engine to go on")
        raise StageError(f"{where} failed {doing}: {answer[1]}; every stage was stopped and "
                         f"the engine closed. Build a new engine to go on", answer[2])
