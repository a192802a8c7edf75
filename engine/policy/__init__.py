"""Placement policy: the data (`Policy`, `Placement`), the measured machine (`HardwareProfile`),
the table's demand (`Workload`), the cost model and the LP solver (`plan` -> `Plan`)."""

from engine.policy.hardware import HardwareProfile, load_profile
from engine.policy.planner import plan
from engine.policy.policy import TIERS, Placement, Policy
from engine.policy.predict import Prediction, predict
from engine.policy.solver import Plan, solve
from engine.policy.workload import Workload

__all__ = [
    "TIERS", "HardwareProfile", "Placement", "Plan", "Policy", "Prediction", "Workload",
    "load_profile", "plan", "predict", "solve",
]
