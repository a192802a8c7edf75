"""The offloading inference engine: tensors in, tensors out; never tables."""

# isort: off
# First, before anything imports torch: oneDNN reads its cache sizes once, at its first matmul,
# and torch whether to use huge pages at its first allocation
# (hence E402 for this file in pyproject.toml).
from engine.native_memory import configure_native_libraries

configure_native_libraries()
# isort: on

from engine.config import ModelConfig
from engine.distributed import StageError
from engine.engine import Engine
from engine.policy import Plan, Workload, plan
from engine.policy.policy import Placement, Policy
from engine.sampling import SamplingParams
from engine.storage import MemoryBudgetError

__all__ = [
    "Engine", "MemoryBudgetError", "ModelConfig", "Placement", "Plan", "Policy", "SamplingParams",
    "StageError", "Workload", "plan",
]
