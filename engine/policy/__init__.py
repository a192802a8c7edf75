"""Placement policy: the data (`Policy`, `Placement`) and, later, the solver."""

from engine.policy.policy import TIERS, Placement, Policy

__all__ = ["TIERS", "Placement", "Policy"]
