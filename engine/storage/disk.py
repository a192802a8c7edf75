"""Tensor files in the offload directory, read and written around the page cache.

Reads and writes use O_DIRECT where the file system allows it (buffers and sizes aligned to
4 KiB), so the disk tier costs real disk time and its bytes are not silently held in RAM;
elsewhere (tmpfs) they fall back to buffered I/O and drop the pages after use.

Data read back is verified: a file's size must be what was written (its bytes padded to ALIGN)
and, when the writer recorded one, the checksum of its bytes must match: xxh3-64 when the
`xxhash` package is installed (0.14 s per GiB here), else zlib's CRC-32 (0.95 s per GiB;
docs/reliability.md). A file truncated, extended or changed behind the engine's back raises
`OffloadFileError` naming the file, never wrong tensors.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch

try:  # a checksum is only compared within the process that wrote it: either will do
    from xxhash import xxh3_64_intdigest as _digest

    CHECKSUM = "xxh3-64"
except ImportError:
    from zlib import crc32 as _digest

    CHECKSUM = "CRC-32"

ALIGN = 4096


class OffloadFileError(OSError):
    """An offload file is missing, of the wrong size, or its bytes are not those written."""


def padded_size(num_bytes: int) -> int:
    return -(-num_bytes // ALIGN) * ALIGN


def aligned_empty(num_bytes: int) -> torch.Tensor:
    """A zeroed uint8 CPU tensor of `num_bytes` (rounded up to ALIGN) whose address is
    ALIGN-aligned, as O_DIRECT wants."""
    padded = padded_size(num_bytes)
    raw = torch.zeros(padded + ALIGN, dtype=torch.uint8)
    offset = (-raw.data_ptr()) % ALIGN
    return raw[offset : offset + padded]


def _open(path: Path, flags: int) -> tuple[int, bool]:
    """Open with O_DIRECT when supported; returns (fd, direct)."""
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, flags | direct, 0o600), True
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o600), False


def _drop_pages(fd: int) -> None:
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def write_file(path: Path, data: torch.Tensor, buffer: torch.Tensor | None = None,
               checksum: bool = False) -> int | None:
    """Write a CPU tensor's bytes (padded to ALIGN) to `path` through an aligned `buffer` (made
    when None; not copied into when `data` already starts it); partial files are removed on
    failure. Returns the checksum (`CHECKSUM`) of the tensor's bytes when `checksum`."""
    flat = data.detach().contiguous().view(-1).view(torch.uint8)  # [N] bytes
    if buffer is None:
        buffer = aligned_empty(flat.numel())
    if flat.data_ptr() != buffer.data_ptr():
        buffer[: flat.numel()].copy_(flat)
    view = memoryview(buffer.numpy())[: padded_size(flat.numel())]
    digest = _digest(view[: flat.numel()]) if checksum else None
    try:
        fd, direct = _open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], written)
            if not direct:
                os.fdatasync(fd)
                _drop_pages(fd)
        finally:
            os.close(fd)
    except BaseException as err:  # a failed write, or Ctrl-C in the middle of one
        path.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        reason = "the disk is full" if err.errno == errno.ENOSPC else err.strerror
        raise OSError(err.errno, f"cannot write offload file {path}: {reason}") from err
    return digest


def read_file(path: Path, num_bytes: int, out: torch.Tensor | None = None,
              checksum: int | None = None) -> torch.Tensor:
    """Read `num_bytes` from `path` into an aligned uint8 buffer (or `out`, if aligned). With
    the `checksum` its writer returned, the file's size and bytes are verified."""
    buffer = out if out is not None else aligned_empty(num_bytes)
    try:
        fd, direct = _open(path, os.O_RDONLY)
    except FileNotFoundError as err:
        raise OffloadFileError(err.errno, f"offload file {path} is gone (was the offload "
                                          f"directory deleted?)") from err
    try:
        if checksum is not None and (size := os.fstat(fd).st_size) != padded_size(num_bytes):
            raise OffloadFileError(errno.EIO, f"offload file {path} has {size} bytes, not the "
                                              f"{padded_size(num_bytes)} written")
        view = memoryview(buffer.numpy())
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], done)
            if got == 0:
                break
            done += got
        if not direct:
            _drop_pages(fd)
    finally:
        os.close(fd)
    if done < num_bytes:
        raise OffloadFileError(errno.EIO, f"offload file {path} is truncated ({done} of "
                                          f"{num_bytes} bytes)")
    if checksum is not None and _digest(view[:num_bytes]) != checksum:
        raise OffloadFileError(errno.EIO, f"offload file {path} is corrupted (the {CHECKSUM} of "
                                          f"its {num_bytes} bytes differs from the one written)")
    return buffer[:num_bytes]
