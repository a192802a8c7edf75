"""The header of a `.safetensors` file, read and checked without mapping the file.

A header lists each tensor's dtype, shape and byte range in the data that follows it. Every
range must hold exactly its tensor's bytes, and the ranges must tile the data: start at 0, never
overlap or leave a gap, end at the file's end. A header that lies (a range past the end of the
file, a range shorter than its shape, two tensors on the same bytes) is refused with the tensor
named, before any tensor is read. The safetensors library checks the same at open; this reads
only the header (no mapping) and says which tensor and which numbers disagree.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


class HeaderError(ValueError):
    """The header is not a safetensors header, or disagrees with itself or the file's size."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte range in the data after the header
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> list[TensorEntry]:
    """Every tensor of the file at `path`, its header checked against itself and the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise HeaderError(f"the file is {size} bytes, too short for a safetensors header")
        header_bytes = struct.unpack("<Q", prefix)[0]
        if header_bytes > min(MAX_HEADER_BYTES, size - 8):
            raise HeaderError(f"the header claims {header_bytes} bytes; the file has "
                              f"{size - 8} after its length field")
        text = handle.read(header_bytes)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HeaderError(f"the header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise HeaderError("the header is not a JSON object of tensors")
    entries = [_entry(name, info) for name, info in header.items() if name != "__metadata__"]
    _check_tiling(entries, size - 8 - header_bytes)
    return entries


def _entry(name: str, info: object) -> TensorEntry:
    if not isinstance(info, dict):
        raise HeaderError(f"tensor {name!r}: its entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise HeaderError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise HeaderError(f"tensor {name!r}: shape {shape!r} is not a list of sizes >= 0")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets))
            or offsets[0] > offsets[1]):
        raise HeaderError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    entry = TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])
    bits = entry.numel * DTYPE_BITS[dtype]
    if bits != 8 * (entry.end - entry.begin):
        raise HeaderError(f"tensor {name!r}: shape {list(shape)} of {dtype} takes {bits / 8:g} "
                          f"bytes, its data_offsets {offsets} span {entry.end - entry.begin}")
    return entry


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_tiling(entries: list[TensorEntry], data_bytes: int) -> None:
    """The ranges, in order, start at 0, touch end to start, and end at the file's end."""
    position, previous = 0, None
    for entry in sorted(entries, key=lambda found: (found.begin, found.end)):
        if entry.begin != position:
            what = "overlaps" if entry.begin < position else "leaves a gap after"
            after = f"tensor {previous!r}" if previous else "the header"
            raise HeaderError(f"tensor {entry.name!r}: bytes [{entry.begin}, {entry.end}) "
                              f"{what} {after}, which ends at {position}")
        if entry.end > data_bytes:
            raise HeaderError(f"tensor {entry.name!r}: bytes [{entry.begin}, {entry.end}) run "
                              f"past the end of the file's {data_bytes} bytes of data")
        position, previous = entry.end, entry.name
    if position != data_bytes:
        raise HeaderError(f"the tensors cover {position} of the file's {data_bytes} bytes of "
                          "data (a truncated or padded file)")
