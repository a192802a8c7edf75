"""A stage's ends of the pipeline, over torch.distributed point-to-point messages.

Hidden states of a GPU batch go from stage r to r + 1 (`send_hidden` / `post_recv` +
`wait_recv`, all asynchronous: a stage computes the next batch while the last one is on the
wire); the batches' transitions (sampled ids, finished rows) go from the last stage to every
other one as small pickled messages (`send_object` / `recv_object`). Every wait has a timeout
and fails with an error naming both stages, so a lost peer never hangs a stage.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from engine.distributed.split import StageSlice

HIDDEN_TAG, CONTROL_TAG = 1, 2


class StageLinkError(RuntimeError):
    """A message to or from another stage did not arrive (the peer died, or timed out)."""


class StageLinks:
    def __init__(self, part: StageSlice, timeout_s: float, hidden_group: Any = None,
                 control_group: Any = None, wire_device: torch.device | None = None) -> None:
        """`hidden_group`: the group hidden states travel in (NCCL on GPUs), `control_group`
        the gloo group of the small messages; None is the default group. `wire_device`: where
        hidden states must be to be sent (the CPU for gloo)."""
        self.part, self.timeout = part, timedelta(seconds=timeout_s)
        self.hidden_group, self.control_group = hidden_group, control_group
        self.wire_device = torch.device(wire_device or "cpu")
        self.bytes_sent: dict[str, int] = {}  # "stage0->stage1" -> bytes
        self.wait_s = 0.0  # seconds spent waiting for messages to arrive or leave
        self._sends: list[tuple[Any, Callable[[], None] | None, Any]] = []
        self._recvs: dict[Any, tuple[Any, torch.Tensor]] = {}

    # waiting ---------------------------------------------------------------------------
    def _wait(self, work: Any, what: str, peer: int) -> None:
        begin = time.perf_counter()
        try:
            work.wait(self.timeout)
        except RuntimeError as err:
            raise StageLinkError(
                f"stage {self.part.rank} of {self.part.stages}: {what} stage {peer} failed or "
                f"timed out after {self.timeout.total_seconds():g} s ({err})") from err
        finally:
            self.wait_s += time.perf_counter() - begin

    def _count(self, dst: int, tensor: torch.Tensor) -> None:
        link = f"stage{self.part.rank}->stage{dst}"
        self.bytes_sent[link] = self.bytes_sent.get(link, 0) + tensor.numel() * tensor.element_size()

    # hidden states ---------------------------------------------------------------------
    def send_hidden(self, hidden: torch.Tensor, on_sent: Callable[[], None]) -> None:
        """Send hidden [B, T, C] to the next stage; `on_sent` runs once it has left (the
        buffer is held until then)."""
        self.poll()
        wire = hidden.to(self.wire_device).contiguous()
        dst = self.part.rank + 1
        work = dist.isend(wire, dst, group=self.hidden_group, tag=HIDDEN_TAG)
        self._count(dst, wire)
        self._sends.append((work, on_sent, wire))

    def post_recv(self, key: Any, buffer: torch.Tensor) -> None:
        """Start receiving the previous stage's next hidden state into `buffer` [B, T, C]."""
        wire = buffer if buffer.device == self.wire_device else torch.empty_like(
            buffer, device=self.wire_device)
        work = dist.irecv(wire, self.part.rank - 1, group=self.hidden_group, tag=HIDDEN_TAG)
        self._recvs[key] = (work, wire)

    def posted(self, key: Any) -> bool:
        return key in self._recvs

    def wait_recv(self, key: Any, buffer: torch.Tensor, what: str) -> None:
        """Wait until the receive posted under `key` has filled `buffer`."""
        work, wire = self._recvs.pop(key)
        self._wait(work, f"{what} from", self.part.rank - 1)
        if wire is not buffer:
            buffer.copy_(wire)

    def poll(self) -> None:
        """Finish the sends that have left: their buffers are released."""
        pending = []
        for work, on_sent, wire in self._sends:
            if work.is_completed():
                work.wait(self.timeout)
                if on_sent is not None:
                    on_sent()
            else:
                pending.append((work, on_sent, wire))
        self._sends = pending

    def settle(self) -> None:
        """Wait for every send in flight (the end of a block)."""
        sends, self._sends = self._sends, []
        for work, on_sent, _ in sends:
            self._wait(work, "a message to", self.part.rank + 1)
            if on_sent is not None:
                on_sent()

    def abandon(self) -> None:
        """A failed block: forget what is in flight (the stage group is torn down after)."""
        self._sends.clear()
        self._recvs.clear()

    # small messages --------------------------------------------------------------------
    def send_object(self, obj: Any, dst: int) -> None:
        payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.long)
        for tensor in (size, payload):
            work = dist.isend(tensor, dst, group=self.control_group, tag=CONTROL_TAG)
            self._count(dst, tensor)
            self._sends.append((work, None, tensor))

    def recv_object(self, src: int, what: str) -> Any:
        size = torch.empty(1, dtype=torch.long)
        self._wait(dist.irecv(size, src, group=self.control_group, tag=CONTROL_TAG),
                   f"{what} from", src)
        payload = torch.empty(int(size), dtype=torch.uint8)
        self._wait(dist.irecv(payload, src, group=self.control_group, tag=CONTROL_TAG),
                   f"{what} from", src)
        return pickle.loads(payload.numpy().tobytes())
