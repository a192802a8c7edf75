"""`PipelineStats`: the stages' measurements, each on its own and gathered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.stats import EngineStats


@dataclass
class PipelineStats(EngineStats):
    """Gathered over the stages: peak bytes per tier and bytes per link summed (each stage is
    its own process with its own tiers), compute / communication / I/O seconds summed;
    `stages[r]` holds stage r's own figures (peak_bytes, budgets, bytes_moved with its
    "stageR->stageS" links, compute_s, comm_s, io_wait_s, layers)."""

    comm_s: float = 0.0  # time stages waited for hidden states and sampled ids
    stages: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def gather(cls, stages: list[dict[str, Any]], total_s: float, prompt_tokens: int,
               generated_tokens: int) -> PipelineStats:
        stats = cls(total_s=total_s, prompt_tokens=prompt_tokens,
                    generated_tokens=generated_tokens, stages=stages)
        for stage in stages:
            for tier, peak in stage["peak_bytes"].items():
                stats.peak_bytes[tier] = stats.peak_bytes.get(tier, 0) + peak
            for link, num_bytes in stage["bytes_moved"].items():
                stats.bytes_moved[link] = stats.bytes_moved.get(link, 0) + num_bytes
            stats.compute_s += stage["compute_s"]
            stats.io_wait_s += stage["io_wait_s"]
            stats.comm_s += stage["comm_s"]
        return stats
