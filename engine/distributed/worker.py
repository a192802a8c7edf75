"""The body of a stage process spawned by `StagedEngine`: join the stage group, load the
stage, then answer the parent's commands until `close` (or until the parent is gone).

Replies on the pipe: ("ok", value) or ("error", "Type: message", traceback text). A stage
never outlives its parent: a watch thread sees the parent's death (its pid changes), removes
this stage's offload directory and exits, even while the main thread waits in a transfer.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import traceback
from datetime import timedelta
from typing import Any

PARENT_POLL_S = 0.2


def _watch_parent(parent_pid: int, stages_dir: str) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    # no time for a clean close: the files go (every stage's: they all end now), then the
    # process
    shutil.rmtree(stages_dir, ignore_errors=True)
    os._exit(3)


def _join_group(rank: int, stages: int, store_port: int, backend: str, timeout_s: float):
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", store_port, is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    dist.init_process_group(backend, store=store, rank=rank, world_size=stages,
                            timeout=timedelta(seconds=timeout_s))
    return None if backend == "gloo" else dist.new_group(backend="gloo")


def _error(err: BaseException) -> tuple[str, str, str]:
    return ("error", f"{type(err).__name__}: {err}", traceback.format_exc())


def stage_main(conn: Any) -> None:
    """The stage process: its first message says who it is and what to load."""
    rank, stages, store_port, parent_pid, options = conn.recv()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the caller's to handle
    threading.Thread(target=_watch_parent, args=(parent_pid, options["offload_dir"]),
                     daemon=True, name="flexgen-parent-watch").start()
    import torch

    torch.set_num_threads(options.pop("threads"))
    try:
        engine = _load(rank, stages, store_port, options)
    except BaseException as err:
        conn.send(_error(err))
        return
    conn.send(("ok", {"policy": engine.policy, "pid": os.getpid(),
                      "offload_dir": str(engine.offload_dir)}))
    _serve(conn, engine)


def _load(rank: int, stages: int, store_port: int, options: dict):
    import torch

    from engine.config import ModelConfig
    from engine.distributed.links import StageLinks
    from engine.distributed.split import stage_slices
    from engine.distributed.stage import StageEngine
    from engine.model import layer_specs

    backend, timeout_s = options.pop("backend"), options.pop("timeout_s")
    if options.get("device") and str(options["device"]).startswith("cuda"):
        torch.cuda.set_device(options["device"])  # NCCL works on the current device
    control = _join_group(rank, stages, store_port, backend, timeout_s)
    model_dir = options.pop("model_dir")
    cfg = ModelConfig.from_pretrained(model_dir)
    part = stage_slices(layer_specs(cfg), stages)[rank]
    wire = None if backend == "gloo" else torch.device(options["device"])
    links = StageLinks(part, timeout_s, control_group=control, wire_device=wire)
    return StageEngine.load(model_dir, part, links, share=stages, **options)


def _serve(conn: Any, engine) -> None:
    import torch.distributed as dist

    closing = False
    try:
        while not closing:
            try:
                command, args = conn.recv()
            except EOFError:  # the parent closed its end: nobody will ask again
                break
            closing = command == "close"
            if not closing:
                conn.send(_answer(engine, command, args))
    finally:
        engine.close()
        dist.destroy_process_group()
    if closing:
        conn.send(("ok", None))


def _answer(engine, command: str, args: tuple) -> tuple:
    """Run one command; only the last stage's results are sent back (the others'
    are placeholders), each stage's stats are."""
    try:
        if command == "stats":
            return ("ok", engine.stage_stats())
        value = getattr(engine, command)(*args)
        return ("ok", value if engine.part.last else None)
    except BaseException as err:
        return _error(err)


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection

    stage_main(Connection(int(sys.argv[1])))
