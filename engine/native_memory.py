"""What the native libraries under torch keep after the engine is done with a block.

Two things make a CPU process grow over a long column while the ledger stays flat (measured in
docs/reliability.md, "Soak"):

- oneDNN (bf16 matmuls on a CPU) keeps one primitive per matmul shape, and ideep, torch's
  wrapper over it, keeps its own computation cache per shape; both default to 1,024 entries.
  Length-bucketed blocks keep making new shapes (rows x padded length), so the caches grew by
  ~0.5 MB per new shape on the demo model, hundreds of MB over a table. A block reuses a set of
  shapes (each matmul of a layer, prefill and decode, per batch length) that 256 entries hold.
- glibc's malloc keeps freed memory in its heaps and arenas; `malloc_trim(0)` hands it back.

And one thing makes big temporaries slow: a prefill's activations (hundreds of MB per layer at
128 rows x 256 ids) are fresh mappings each time, faulted in 4 KiB at a time. torch's CPU
allocator backs allocations of 2 MiB and more with transparent huge pages when
`THP_MEM_ALLOC_ENABLE=1` (and the kernel's THP mode is `madvise` or `always`): on Qwen2-0.5B's
shape in RAM (64 x 256 -> 16, bf16, alternating processes) prefill took 10.1 / 10.8 s instead of
11.4 / 12.7 s, generate 77.2 / 76.0 tok/s instead of 71.0 / 73.0, and peak RSS fell a little
(2.33 vs 2.42-2.57 GB).

`configure_native_libraries` sets these unless the user already chose them (the variables are
read when the libraries first build a cache or allocate); `return_freed_memory` runs at every
block's end. fp32 matmuls (MKL) keep no such caches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CACHE_ENTRIES = 256  # demo classification: 64 thrashed (1.8x slower), 256 ran as fast as 1,024
_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def configure_native_libraries() -> None:
    """oneDNN's and ideep's per-shape caches at CACHE_ENTRIES and huge pages for torch's big
    CPU allocations, each unless set in the environment."""
    for name in _CACHE_VARIABLES:
        os.environ.setdefault(name, str(CACHE_ENTRIES))
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _load_malloc_trim():
    """glibc's `malloc_trim`, or None (musl, macOS, Windows: nothing to call)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    trim = getattr(ctypes.CDLL(library), "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def return_freed_memory() -> None:
    """Give the memory malloc holds free back to the OS (glibc; a no-op elsewhere)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
