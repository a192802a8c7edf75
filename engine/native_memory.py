"""What the native libraries under torch keep after the engine is done with a block.

Two things make a CPU process grow over a long column while the ledger stays flat (measured in
docs/reliability.md, "Soak"):

- oneDNN (bf16 matmuls on a CPU) keeps one primitive per matmul shape, and ideep, torch's
  wrapper over it, keeps its own computation cache per shape; both default to 1,024 entries.
  Length-bucketed blocks keep making new shapes (rows x padded length), so the caches grew by
  ~0.5 MB per new shape on the demo model, hundreds of MB over a table. A block reuses a set of
  shapes (each matmul of a layer, prefill and decode, per batch length) that 256 entries hold.
- glibc's malloc keeps freed memory in its heaps and arenas; `malloc_trim(0)` hands it back.

`bound_native_caches` sets the caches' sizes unless the user already chose them (the variables
are read when the libraries first build a cache); `return_freed_memory` runs at every block's
end. fp32 matmuls (MKL) keep no such caches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CACHE_ENTRIES = 256  # demo classification: 64 thrashed (1.8x slower), 256 ran as fast as 1,024
_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_native_caches() -> None:
    """oneDNN's and ideep's per-shape caches at CACHE_ENTRIES, unless set in the environment."""
    for name in _CACHE_VARIABLES:
        os.environ.setdefault(name, str(CACHE_ENTRIES))


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
