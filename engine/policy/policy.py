"""The placement policy: how a block is shaped and where each kind of tensor lives.

A policy is plain data. The engine reads it; the solver in `engine.policy.solver` writes it.
Percentages follow FlexGen: for each of weights, KV cache and activations, what share sits on
the device tier, the host tier and the disk tier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TIERS = ("device", "host", "disk")


@dataclass(frozen=True)
class Placement:
    """Percent of a tensor kind on each tier; the three sum to 100."""

    device: float = 100.0
    host: float = 0.0
    disk: float = 0.0

    def __post_init__(self) -> None:
        for tier in TIERS:
            if getattr(self, tier) < 0:
                raise ValueError(f"Placement.{tier} is negative ({getattr(self, tier)})")
        total = self.device + self.host + self.disk
        if abs(total - 100.0) > 1e-6:
            raise ValueError(
                f"Placement percentages must sum to 100, got device={self.device} "
                f"host={self.host} disk={self.disk} (sum {total})"
            )

    def as_dict(self) -> dict[str, float]:
        return {tier: getattr(self, tier) for tier in TIERS}

    @classmethod
    def on(cls, tier: str) -> Placement:
        """Everything on one tier: `Placement.on("disk")`."""
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; tiers are {TIERS}")
        return cls(**{t: (100.0 if t == tier else 0.0) for t in TIERS})


@dataclass(frozen=True)
class Policy:
    """A block is `gpu_batch_size * num_gpu_batches` rows; each layer's weights are loaded once
    per token per block and reused by every GPU batch of the block."""

    gpu_batch_size: int = 8
    num_gpu_batches: int = 1
    weights: Placement = field(default_factory=Placement)
    cache: Placement = field(default_factory=Placement)
    activations: Placement = field(default_factory=Placement)
    overlap: bool = True
    cpu_attention: bool = False  # attention over a host-resident cache runs on the host
    compress_weights: bool = False  # 4-bit group-wise weights
    compress_cache: bool = False  # 4-bit group-wise KV cache

    def __post_init__(self) -> None:
        if self.gpu_batch_size < 1:
            raise ValueError(f"gpu_batch_size must be >= 1, got {self.gpu_batch_size}")
        if self.num_gpu_batches < 1:
            raise ValueError(f"num_gpu_batches must be >= 1, got {self.num_gpu_batches}")

    @property
    def block_size(self) -> int:
        return self.gpu_batch_size * self.num_gpu_batches

    def same_weights(self, other: Policy) -> bool:
        """Whether `other` keeps the weights where this policy put them (placement, 4-bit
        codes) and runs with the same I/O overlap: what an engine fixes when it loads."""
        return (self.weights, self.compress_weights, self.overlap) == (
            other.weights, other.compress_weights, other.overlap)
