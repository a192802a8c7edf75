"""What the engine measured: peak bytes per tier, bytes per link, time, tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EngineStats:
    peak_bytes: dict[str, int] = field(default_factory=lambda: {"device": 0, "host": 0, "disk": 0})
    bytes_moved: dict[str, int] = field(default_factory=dict)  # "disk->device" -> bytes
    compute_s: float = 0.0  # time inside layer computes
    io_wait_s: float = 0.0  # time computes waited for loads and stores
    total_s: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def add_run(self, executor: Any, ledger: Any) -> None:
        """Fold in one block's executor timings and the ledger's peaks and moves."""
        self.compute_s += executor.compute_s
        self.io_wait_s += executor.io_wait_s
        for tier, peak in ledger.peak.items():
            self.peak_bytes[tier] = max(self.peak_bytes.get(tier, 0), peak)
        for link, num_bytes in ledger.moved.items():
            self.bytes_moved[link] = self.bytes_moved.get(link, 0) + num_bytes
        ledger.moved.clear()

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.total_s if self.total_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}

    def __getitem__(self, key: str) -> Any:  # stats["peak_bytes"] works as well as .peak_bytes
        return self.as_dict()[key]
