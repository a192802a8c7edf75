"""What one column run did: rows, tokens, time, parse failures and the plan it ran under."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_FAILURES_KEPT = 20  # failure reasons kept for inspection; the count covers all of them


@dataclass
class RunStats:
    task: str
    rows: int = 0  # input rows, NULLs and duplicates included
    null_rows: int = 0  # NULL inputs, returned NULL without model work
    computed_rows: int = 0  # distinct non-NULL inputs sent to the model
    prompt_tokens: int = 0  # shared prefix counted once per engine call
    output_tokens: int = 0  # generated tokens, or scored label tokens for classify
    seconds: float = 0.0  # wall time of the run, setup included
    setup_seconds: float = 0.0  # building (and planning) the engine, on a run that needed it
    parse_failures: int = 0  # input rows returned NULL because their output did not parse
    failures: list[tuple[int, str]] = field(default_factory=list)  # (input row, reason)
    plan: str = ""  # the engine policy the run used

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def work_seconds(self) -> float:
        return max(self.seconds - self.setup_seconds, 0.0)

    @property
    def rows_per_s(self) -> float:  # throughput: engine setup left out
        return self.rows / self.work_seconds if self.work_seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.work_seconds if self.work_seconds else 0.0

    def add_failure(self, row: int, reason: str, count: int = 1) -> None:
        self.parse_failures += count
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append((row, reason))

    def merge(self, other: RunStats) -> None:
        """Fold in another run of the same task (a stream's next block)."""
        for name in ("rows", "null_rows", "computed_rows", "prompt_tokens", "output_tokens",
                     "seconds", "setup_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.parse_failures += other.parse_failures
        self.failures.extend(other.failures[: MAX_FAILURES_KEPT - len(self.failures)])
        self.plan = other.plan or self.plan

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens": self.tokens, "rows_per_s": self.rows_per_s,
                "tokens_per_s": self.tokens_per_s}

    def summary(self) -> str:
        return (f"{self.task}: {self.rows} rows ({self.computed_rows} computed, "
                f"{self.null_rows} null) in {self.seconds:.2f}s"
                + (f" ({self.setup_seconds:.2f}s engine setup)" if self.setup_seconds >= 0.01 else "")
                + f", {self.rows_per_s:.1f} rows/s, "
                f"{self.tokens_per_s:.0f} tokens/s, {self.parse_failures} parse failures")
