"""`LLM`: a model directory, its tokenizer, and a lazily built engine reused across calls.

The tokenizer and the model config are read at construction (cheap, and they let every task
validate its arguments before any model work); the engine, which places the weights on the
tiers, is built on first use and released by `close()` or at the end of a `with` block.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from transformers import AutoTokenizer

from engine import Engine, MemoryBudgetError, ModelConfig, Policy, Workload, plan
from flexgen_wrangle.columns import as_text_array
from flexgen_wrangle.constraints import JsonConstraints
from flexgen_wrangle.encoding import PromptEncoder
from flexgen_wrangle.pipeline import PipelineOptions, run_column
from flexgen_wrangle.schema import MAX_STRING_LENGTH, make_schema
from flexgen_wrangle.stats import RunStats
from flexgen_wrangle.tasks import Classify, Extract, Generate

logger = logging.getLogger(__name__)

# The engine is planned once and reused by later calls: plan for a column of at least this many
# rows, so that a small first call does not leave a tiny block shape for the big ones after it.
MIN_PLANNED_ROWS = 1024
DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "examples" / "demo_model"


class LLM:
    """`fw.LLM(model_dir)`; tasks: `classify`, `extract`, `generate` over a text column.

    policy: "auto" (the planner places the engine for the first column it runs, taken as at
    least `MIN_PLANNED_ROWS` rows, and re-plans the blocks for each later column, the weights
    staying where they are), None (the engine's default policy), or an `engine.Policy`.
    memory: budgets per tier, e.g. {"device": "2GiB", "host": "8GiB"}.
    allow_compression: the planner may choose 4-bit weights / KV cache, which change outputs
    (off by default; the demo model's accuracy with them is in README.md).
    stages: N > 1 cuts the model's layers into N pipeline stages, one process each
    (`engine.distributed`); `memory` is then each stage's budget, and "auto" lets each stage
    plan for its own layers.
    """

    def __init__(self, model_dir: str | Path, memory: dict[str, str | int] | None = None,
                 policy: Any = "auto", progress: bool = True, dtype: torch.dtype | None = None,
                 device: str | None = None, offload_dir: str | Path | None = None,
                 use_chat: bool | None = None, allow_compression: bool = False,
                 stages: int = 1) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir} has no config.json: not a model directory")
        self.memory, self.policy, self.progress = memory, policy, progress
        self.dtype, self.device, self.offload_dir, self.use_chat = dtype, device, offload_dir, use_chat
        self.allow_compression, self.stages = allow_compression, stages
        self.config = ModelConfig.from_pretrained(self.model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.encoder = PromptEncoder(self.tokenizer, use_chat)
        self.stop_ids = _stop_ids(self.model_dir, self.config, self.tokenizer)
        self._engine: Engine | None = None
        self._building = threading.Lock()  # threads that start together build one engine
        self._constraints: JsonConstraints | None = None
        self.plan: Any = None  # the planner's Plan, when it placed the engine
        self._planned_for: Workload | None = None  # the workload `plan` was made for
        self.last_stats: RunStats | None = None

    @classmethod
    def demo(cls, **kwargs: Any) -> LLM:
        """The project's own small demo model (examples/demo_model/)."""
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            raise FileNotFoundError(
                f"the demo model is not at {DEMO_MODEL_DIR}; train it with "
                "`python -m examples.train_demo_model --out examples/demo_model`"
            )
        return cls(DEMO_MODEL_DIR, **kwargs)

    # resources ----------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The engine, built on first use (with `policy`, unplanned)."""
        with self._building:
            if self._engine is None or self._engine.closed:
                self._build(self.policy)
            return self._engine

    def prepare(self, rows: int, lengths: list[int], gen_len: int, shared_prefix: int) -> Engine:
        """The engine for this workload (rows, prompt lengths after the prefix, new tokens per
        row). With the policy "auto" the planner places it: when it is built (with stages,
        each stage plans its own layers), and again for each later workload, whose plan the
        built engine takes where it keeps the weights where they are (a classification column
        plans blocks of many short rows, an extraction column fewer, longer ones)."""
        with self._building:
            workload = None
            if self.policy == "auto":
                workload = Workload(rows=max(rows, MIN_PLANNED_ROWS),
                                    prompt_len=dict(Counter(lengths)),
                                    gen_len=max(gen_len, 1), shared_prefix=shared_prefix)
            planned_here = workload is not None and self.stages == 1  # else each stage plans
            if self._engine is None or self._engine.closed:
                policy = self._planned_policy(workload) if planned_here else self.policy
                self._build(policy, None if planned_here else workload)
            elif planned_here:
                self._replan(workload)
            return self._engine

    def _replan(self, workload: Workload) -> None:
        """The built engine takes this workload's plan if that keeps its weights in place."""
        if workload == self._planned_for:  # the same column shape again: the same plan
            return
        in_use = self.plan
        planned = self._planned_policy(workload)
        if isinstance(planned, Policy) and planned.same_weights(self._engine.policy):
            self._engine.use_policy(planned)
        else:  # `plan` keeps describing the policy the engine runs
            self.plan = in_use
            logger.info("keeping the engine's policy: the plan for %s would move its weights",
                        workload)

    def _planned_policy(self, workload: Workload) -> Any:
        try:
            self.plan = plan(self.model_dir, workload, memory=self.memory, device=self.device,
                             dtype=self.dtype, offload_dir=self.offload_dir,
                             allow_compression=self.allow_compression)
        except MemoryBudgetError:  # not one row fits these budgets: nothing else would run
            raise
        except Exception as err:  # planning is an optimisation: never fail the column for it
            logger.warning("planning failed (%s); using the engine's default policy", err)
            policy = "auto"
        else:
            policy = self.plan.policy
        self._planned_for = workload  # a refused workload is planned again when it comes back
        return policy

    def _build(self, policy: Any, workload: Workload | None = None) -> None:
        logger.info("building the engine for %s", self.model_dir)
        self._engine = Engine.from_pretrained(
            self.model_dir, policy=policy, device=self.device, dtype=self.dtype,
            offload_dir=self.offload_dir, memory=self.memory,
            allow_compression=self.allow_compression, stages=self.stages, workload=workload,
        )

    @property
    def constraints(self) -> JsonConstraints:
        if self._constraints is None:
            self._constraints = JsonConstraints(self.tokenizer, self.config.vocab_size,
                                                self.stop_ids)
        return self._constraints

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    @property
    def plan_text(self) -> str:
        """The policy the engine runs under (and why, when the planner chose it)."""
        why = getattr(self.plan, "why", None)
        return f"{self.engine.policy!r}" + (f"; planned: {why}" if why else "")

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple:  # ship the recipe, not the placed weights (Ray, pools)
        return (_rebuild, (self.model_dir, self.memory, self.policy, self.progress, self.dtype,
                           self.device, self.offload_dir, self.use_chat, self.allow_compression,
                           self.stages))

    def __repr__(self) -> str:
        state = "engine built" if self._engine is not None else "engine not built"
        return f"LLM({str(self.model_dir)!r}, {state})"

    # tasks -------------------------------------------------------------------------------
    def classify(self, texts: Any, labels: Sequence[str], instruction: str | None = None,
                 examples: Sequence[tuple[str, str]] = (), **options: Any) -> pa.StructArray:
        """Struct {label, probability} per row (NULL for NULL rows)."""
        return self.run(self.classify_task(labels, instruction, examples), texts, **options)

    def extract(self, texts: Any, schema: Any, instruction: str | None = None,
                examples: Sequence[tuple[str, Any]] = (), max_new_tokens: int | None = None,
                max_string_length: int = MAX_STRING_LENGTH, **options: Any) -> pa.StructArray:
        """Struct with one typed field per schema field (NULL where the row failed to parse)."""
        task = self.extract_task(schema, instruction, examples, max_new_tokens, max_string_length)
        return self.run(task, texts, **options)

    def generate(self, prompts: Any, max_new_tokens: int = 64,
                 stop: Sequence[str] | str | None = None, prefix: str = "",
                 **options: Any) -> pa.StringArray:
        """Free text after each prompt (`prefix + prompt`; the prefix is shared by all rows)."""
        return self.run(self.generate_task(max_new_tokens, stop, prefix), prompts, **options)

    def classify_task(self, labels: Sequence[str], instruction: str | None = None,
                      examples: Sequence[tuple[str, str]] = ()) -> Classify:
        return Classify(self.encoder, labels, instruction, examples)

    def extract_task(self, schema: Any, instruction: str | None = None,
                     examples: Sequence[tuple[str, Any]] = (), max_new_tokens: int | None = None,
                     max_string_length: int = MAX_STRING_LENGTH) -> Extract:
        parsed = make_schema(schema, max_string_length)
        return Extract(self.encoder, self.constraints, parsed, instruction, examples,
                       max_new_tokens)

    def generate_task(self, max_new_tokens: int = 64, stop: Sequence[str] | str | None = None,
                      prefix: str = "") -> Generate:
        return Generate(self.encoder, self.stop_ids, max_new_tokens, stop, prefix)

    def run(self, task: Any, texts: Any, column: str | None = None, **options: Any) -> pa.Array:
        """Run a task over a column; the run's stats land in `last_stats`."""
        array = as_text_array(texts, column)
        options.setdefault("progress", self.progress)
        result, self.last_stats = run_column(self, task, array, PipelineOptions(**options))
        logger.info("%s", self.last_stats.summary())
        return result


def _rebuild(*args: Any) -> LLM:
    return LLM(*args)


def _stop_ids(model_dir: Path, config: ModelConfig, tokenizer: Any) -> list[int]:
    """EOS ids from the config, generation_config.json and the tokenizer, first one first."""
    ids = list(config.eos_token_ids)
    generation = model_dir / "generation_config.json"
    if generation.is_file():
        eos = json.loads(generation.read_text()).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [] if eos is None else [eos]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(token) for token in ids if token is not None))
