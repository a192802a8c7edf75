"""What verifying the disk tier costs: checksum throughput (xxh3-64, CRC-32), and an offloaded
generate (every weight read from disk each token) with the offload files verified by xxh3-64,
by CRC-32, and by size alone, alternated in one process so the ratios survive a noisy machine.

    python -m benchmarks.checksum_cost [--model opt-350m] [--rows 4] [--new-tokens 4] [--rounds 3]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from benchmarks.checkpoints import ensure_checkpoint
from engine import Engine, Placement, Policy, SamplingParams
from engine.storage import disk

ON_DISK = Policy(4, 1, Placement.on("disk"), Placement.on("host"), Placement.on("host"))
SIZE = 256 * 2**20


def _timed(fn: Callable[[], object]) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def _per_gib(fn: Callable[[], object], rounds: int = 3) -> float:
    return round(min(_timed(fn) for _ in range(rounds)) * 2**30 / SIZE, 3)


def _digests() -> dict[str, Callable | None]:
    found: dict[str, Callable | None] = {"crc32": zlib.crc32, "size only": None}
    with contextlib.suppress(ImportError):
        from xxhash import xxh3_64_intdigest

        found = {"xxh3-64": xxh3_64_intdigest, **found}
    return found


@contextlib.contextmanager
def _digest(fn: Callable | None) -> Iterator[None]:
    """Offload files checksummed with `fn` (None: none recorded, the size alone verified)."""
    real_digest, real_write = disk._digest, disk.write_file

    def write_file(path, data, buffer=None, checksum=False):
        return real_write(path, data, buffer, checksum=checksum and fn is not None)

    disk._digest = fn or real_digest
    disk.write_file = write_file
    try:
        yield
    finally:
        disk._digest, disk.write_file = real_digest, real_write


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="opt-350m")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model_dir, work = ensure_checkpoint(args.model), Path(tempfile.mkdtemp(prefix="cksum-"))
    data = memoryview(torch.randint(0, 255, (SIZE,), dtype=torch.uint8).numpy())
    probe = work / "read-probe.bin"
    disk.write_file(probe, torch.ones(SIZE, dtype=torch.uint8))
    result: dict = {"model": args.model, "rows": args.rows, "new_tokens": args.new_tokens,
                    "s_per_gib": {"odirect read": _per_gib(lambda: disk.read_file(probe, SIZE))}}
    probe.unlink()
    prompts = [[5 + (row * 7 + col) % 900 for col in range(32)] for row in range(args.rows)]
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    engines, seconds, outputs = {}, {}, {}
    with contextlib.ExitStack() as stack:
        for name, fn in _digests().items():
            if fn is not None:
                result["s_per_gib"][name] = _per_gib(lambda fn=fn: fn(data))
            with _digest(fn):
                engines[name] = stack.enter_context(
                    Engine.from_pretrained(model_dir, policy=ON_DISK, offload_dir=work))
            seconds[name] = []
        for _ in range(args.rounds):
            for name, fn in _digests().items():
                with _digest(fn):
                    seconds[name].append(_timed(lambda name=name: outputs.__setitem__(
                        name, engines[name].generate(prompts, params))))
        read = engines["size only"].stats.bytes_moved.get("disk->device", 0) / args.rounds
    assert len({json.dumps(out) for out in outputs.values()}) == 1
    result["disk_bytes_read_per_generate"] = int(read)
    result["generate_s"] = {name: [round(s, 2) for s in values] for name, values in seconds.items()}
    base = min(seconds["size only"])
    result["generate_ratio_over_size_only"] = {name: round(min(values) / base, 3)
                                               for name, values in seconds.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
