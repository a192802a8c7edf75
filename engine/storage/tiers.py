"""The three tiers and the copies between them.

`put` homes a tensor on a tier; `fetch` gives a copy on the compute device (or the tensor itself
when it already lives there) as a `Lease` whose bytes count on the device tier until released;
`hand_over` homes what compute produced; `write_back` refreshes a home from a device tensor.
Every byte allocated or moved is recorded in the `Ledger`, which is what `engine.stats` reports.

On a CPU the device and host tiers are the same RAM: a host-resident tensor is computed on
where it lives and a computed tensor is homed on the host without a copy; only the charges move
between the tiers' budgets (and no bytes are counted on the host->device link). Reads from the
disk tier land in reusable staging buffers (`BufferPool`), charged while held. Every disk home
records the checksum of what was written and every read verifies it (`disk.read_file`); a failed
read or write raises an `OffloadFileError` / `OSError` naming the tensor, the tier and the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.compression import QuantMeta, dequantize, quantize
from engine.storage import disk
from engine.storage.ledger import Ledger, format_bytes
from engine.storage.offload_dirs import make_offload_dir
from engine.storage.pool import BufferPool

logger = logging.getLogger(__name__)


@dataclass
class Placed:
    """A tensor homed on one tier: in memory (`tensor`) or in an offload file (`path`)."""

    tier: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    tensor: torch.Tensor | None = None
    path: Path | None = None
    quant: QuantMeta | None = None  # set when the home holds 4-bit codes of the tensor
    checksum: int | None = None  # of the offload file's bytes (disk.CHECKSUM), verified on reads

    @property
    def nbytes(self) -> int:
        return _nbytes(self.shape, self.dtype)

    @property
    def logical_shape(self) -> tuple[int, ...]:
        """Shape of the tensor it stands for (the stored buffer is flat when compressed)."""
        return self.quant.shape if self.quant is not None else self.shape


@dataclass
class Lease:
    """A tensor on the compute device; `charged` bytes count on the device tier until released.
    `staging` is the pooled buffer the tensor views, given back to the pool on release."""

    tensor: torch.Tensor
    charged: int
    staging: torch.Tensor | None = None


@dataclass(frozen=True)
class TierState:
    """`Tiers.snapshot`: bytes charged per tier and the names of the offload files."""

    used: dict[str, int]
    files: frozenset[str]


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return int(torch.Size(shape).numel()) * dtype.itemsize


class Tiers:
    """Owns the offload directory; `close()` removes it."""

    def __init__(self, ledger: Ledger, device: torch.device, offload_dir: str | Path | None) -> None:
        self.ledger = ledger
        self.device = device
        self._pin = device.type == "cuda"
        # disk reads land here: on the device itself on a CPU, in (pinned) host RAM on a GPU
        self.staging = BufferPool(ledger, "device" if device.type == "cpu" else "host")
        parent = Path(offload_dir) if offload_dir is not None else None
        try:  # the directories of engines that died without cleaning up are removed first
            self.offload_dir = make_offload_dir(parent)
        except OSError as err:
            raise OSError(err.errno, f"offload directory {parent} is not writable: {err}") from err
        self._names = itertools.count()

    def close(self) -> None:
        self.staging.trim()
        shutil.rmtree(self.offload_dir, ignore_errors=True)

    def snapshot(self) -> TierState:
        """What each tier holds now: its charges and the offload directory's files."""
        return TierState(dict(self.ledger.used), self._files())

    def restore(self, state: TierState) -> None:
        """Back to `state` after a failed or interrupted call, once no thread touches the tiers:
        every file made since is removed and every charge taken since dropped, whether or not
        the homes that owned them were ever recorded anywhere (an interrupt can land between a
        home's birth and its entry in a block's tables)."""
        for name in self._files() - state.files:
            with contextlib.suppress(OSError):
                (self.offload_dir / name).unlink(missing_ok=True)
        for tier, used in list(self.ledger.used.items()):
            self.ledger.free(tier, used - state.used.get(tier, 0))

    def _files(self) -> frozenset[str]:
        try:
            return frozenset(os.listdir(self.offload_dir))
        except OSError:  # deleted behind the engine's back: nothing of it to remove
            return frozenset()

    def in_place(self, tier: str) -> bool:
        """Whether a tensor homed on `tier` is computed on where it lives (no copy)."""
        return tier == "device" or (tier == "host" and self.device.type == "cpu")

    def put(self, tier: str, tensor: torch.Tensor, what: str, compress: bool = False) -> Placed:
        """Home a copy of `tensor` on `tier`, as 4-bit codes when `compress`."""
        quant = None
        if compress:
            tensor, quant = quantize(tensor)
        placed = Placed(tier, tuple(tensor.shape), tensor.dtype, quant=quant)
        self.ledger.allocate(tier, placed.nbytes, what)
        try:
            self._store(placed, tensor)
        except BaseException:  # nothing of it stays: neither its charge nor its file
            self.ledger.free(tier, placed.nbytes)
            if placed.path is not None:
                placed.path.unlink(missing_ok=True)
            raise
        return placed

    def write_back(self, placed: Placed, lease: Lease, what: str) -> None:
        """Refresh `placed` from a device lease, which may have a new shape (rows removed)."""
        tensor = lease.tensor
        if tensor is placed.tensor:  # updated in place, where it lives
            return
        if placed.quant is not None:
            tensor, placed.quant = quantize(tensor)
        new_bytes = _nbytes(tuple(tensor.shape), tensor.dtype)
        if new_bytes != placed.nbytes:
            self.ledger.free(placed.tier, placed.nbytes)
            self.ledger.allocate(placed.tier, new_bytes, what)
            placed.shape = tuple(tensor.shape)
        if self.in_place(placed.tier) and placed.quant is None:  # the caller hands it over
            placed.tensor = tensor
            return
        self._store(placed, tensor, lease.staging)

    def hand_over(self, tier: str, lease: Lease, what: str, compress: bool = False) -> Placed:
        """Home a computed tensor on `tier`. Where that tier is computed on in place, the tensor
        itself becomes the home and its charge moves there; elsewhere it is copied (or
        compressed) and the lease released."""
        if compress or not self.in_place(tier) or lease.staging is not None:
            placed = self.put(tier, lease.tensor, what, compress)
            self.release(lease)
            return placed
        placed = Placed(tier, tuple(lease.tensor.shape), lease.tensor.dtype, lease.tensor)
        self.release(lease)  # the charge moves: freed on the device first, then taken on `tier`
        self.ledger.allocate(tier, placed.nbytes, what)
        return placed

    def take(self, placed: Placed, what: str) -> Lease:
        """`fetch` a home and free it: its contents are needed once more (a hidden state)."""
        if self.in_place(placed.tier) and placed.quant is None:
            tensor = placed.tensor
            self.free(placed)  # the home's charge moves to the lease
            return self.adopt(tensor, what)
        lease = self.fetch(placed, what)
        self.free(placed)
        return lease

    def free(self, placed: Placed) -> None:
        self.ledger.free(placed.tier, placed.nbytes)
        placed.tensor = None
        if placed.path is not None:
            try:
                placed.path.unlink(missing_ok=True)
            except OSError as err:  # e.g. a read-only disk: `close` removes it with the directory
                logger.warning("cannot remove offload file %s: %s", placed.path, err.strerror)
            placed.path = None

    def fetch(self, placed: Placed, what: str) -> Lease:
        """A tensor on the compute device with `placed`'s contents."""
        if placed.quant is not None:
            return self._fetch_compressed(placed, what)
        if self.in_place(placed.tier):
            return Lease(placed.tensor, 0)
        self.ledger.record_move(placed.tier, "device", placed.nbytes)
        if placed.tier == "disk":
            return self._read_disk(placed, what)
        self.ledger.allocate("device", placed.nbytes, what)
        return Lease(placed.tensor.to(self.device, non_blocking=self._pin), placed.nbytes)

    def _fetch_compressed(self, placed: Placed, what: str) -> Lease:
        codes = self.fetch(dataclasses.replace(placed, quant=None), what)
        lease = self.adopt(dequantize(codes.tensor, placed.quant), what)
        self.release(codes)
        return lease

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, what: str) -> Lease:
        """A fresh zeroed working buffer on the compute device."""
        num_bytes = _nbytes(shape, dtype)
        self.ledger.allocate("device", num_bytes, what)
        return Lease(torch.zeros(shape, dtype=dtype, device=self.device), num_bytes)

    def adopt(self, tensor: torch.Tensor, what: str) -> Lease:
        """Charge a tensor that compute produced on the device."""
        num_bytes = tensor.numel() * tensor.element_size()
        self.ledger.allocate("device", num_bytes, what)
        return Lease(tensor, num_bytes)

    def release(self, lease: Lease) -> None:
        self.ledger.free("device", lease.charged)
        lease.charged = 0
        if lease.staging is not None:
            self.staging.give(lease.staging)
            lease.staging = None

    def _store(self, placed: Placed, tensor: torch.Tensor,
               staged: torch.Tensor | None = None) -> None:
        if placed.tier == "device":
            placed.tensor = tensor.detach().to(self.device, copy=True).contiguous()
        elif placed.tier == "host":
            host = tensor.detach().to("cpu", copy=True).contiguous()
            placed.tensor = host.pin_memory() if self._pin else host
            self.ledger.record_move("device", "host", placed.nbytes)
        else:
            placed.path = placed.path or self.offload_dir / f"t{next(self._names)}.bin"
            self._write_disk(placed, tensor.detach().to("cpu"), staged)
            self.ledger.record_move("device", "disk", placed.nbytes)

    def _write_disk(self, placed: Placed, tensor: torch.Tensor, staged: torch.Tensor | None) -> None:
        """Write through `staged` (the staging buffer the tensor was read into, written from as
        it is) or a staging buffer of the pool; record the checksum."""
        try:
            if staged is not None and tensor.data_ptr() == staged.data_ptr():
                placed.checksum = disk.write_file(placed.path, tensor, staged, checksum=True)
                return
            buffer = self.staging.take(placed.nbytes, f"write of {placed.path.name}",
                                       (placed.shape, placed.dtype))
            try:
                placed.checksum = disk.write_file(placed.path, tensor, buffer, checksum=True)
            finally:
                self.staging.give(buffer)
        except OSError as err:
            placed.path, placed.checksum = None, None  # write_file removed the partial file
            raise self._write_error(err, disk.padded_size(placed.nbytes)) from err

    def _write_error(self, err: OSError, num_bytes: int) -> OSError:
        if err.errno == errno.ENOSPC:
            free = shutil.disk_usage(self.offload_dir).free if self.offload_dir.exists() else 0
            return OSError(err.errno, f"the disk tier ({self.offload_dir}) is full: "
                           f"{format_bytes(num_bytes)} more were needed, {format_bytes(free)} "
                           f"are free ({err.strerror}). Free space there, give an offload_dir "
                           "on a larger disk, or a policy with less on the disk tier")
        return OSError(err.errno, f"the disk tier ({self.offload_dir}) cannot take "
                       f"{format_bytes(num_bytes)}: {err.strerror}. The offload directory must "
                       "stay writable while the engine runs")

    def _read_disk(self, placed: Placed, what: str) -> Lease:
        """Read a disk home into a pooled staging buffer (page cache bypassed), verified."""
        buffer = self.staging.take(placed.nbytes, what, (placed.shape, placed.dtype))
        try:
            raw = disk.read_file(placed.path, placed.nbytes, out=buffer,
                                 checksum=placed.checksum)  # [nbytes] uint8
        except BaseException as err:
            self.staging.give(buffer)
            if isinstance(err, OSError):
                raise disk.OffloadFileError(
                    err.errno, f"{what} on the disk tier cannot be read back: {err.strerror}. "
                    "Nothing was computed from it; run the call again, and if it names a "
                    "weight, close the engine and build it again (the checkpoint is re-read)"
                ) from err
            raise
        tensor = raw.view(placed.dtype).view(placed.shape)
        if self.device.type == "cpu":
            return Lease(tensor, 0, staging=buffer)
        self.ledger.allocate("device", placed.nbytes, what)
        on_device = tensor.pin_memory().to(self.device, non_blocking=True)
        self.staging.give(buffer)
        return Lease(on_device, placed.nbytes)
