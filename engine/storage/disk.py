"""Tensor files in the offload directory, read and written around the page cache.

Reads and writes use O_DIRECT where the file system allows it (buffers and sizes aligned to
4 KiB), so the disk tier costs real disk time and its bytes are not silently held in RAM;
elsewhere (tmpfs) they fall back to buffered I/O and drop the pages after use.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch

ALIGN = 4096


def aligned_empty(num_bytes: int) -> torch.Tensor:
    """A zeroed uint8 CPU tensor of `num_bytes` (rounded up to ALIGN) whose address is
    ALIGN-aligned, as O_DIRECT wants."""
    padded = -(-num_bytes // ALIGN) * ALIGN
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


def write_file(path: Path, data: torch.Tensor, buffer: torch.Tensor | None = None) -> None:
    """Write a CPU tensor's bytes to `path` through an aligned `buffer` (made when None; not
    copied into when `data` already starts it); partial files are removed on failure."""
    flat = data.detach().contiguous().view(-1).view(torch.uint8)  # [N] bytes
    if buffer is None:
        buffer = aligned_empty(flat.numel())
    if flat.data_ptr() != buffer.data_ptr():
        buffer[: flat.numel()].copy_(flat)
    try:
        fd, direct = _open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            view = memoryview(buffer.numpy())
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], written)
            if not direct:
                os.fdatasync(fd)
                _drop_pages(fd)
        finally:
            os.close(fd)
    except OSError as err:
        path.unlink(missing_ok=True)
        reason = "the disk is full" if err.errno == errno.ENOSPC else err.strerror
        raise OSError(err.errno, f"cannot write offload file {path}: {reason}") from err


def read_file(path: Path, num_bytes: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Read `num_bytes` from `path` into an aligned uint8 buffer (or `out`, if aligned)."""
    buffer = out if out is not None else aligned_empty(num_bytes)
    fd, direct = _open(path, os.O_RDONLY)
    try:
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
        raise OSError(errno.EIO, f"offload file {path} is truncated ({done} of {num_bytes} bytes)")
    return buffer[:num_bytes]
