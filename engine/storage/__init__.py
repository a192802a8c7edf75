"""Storage tiers (device, host, disk) with budgets, byte accounting and copies between them.
No model knowledge lives here."""

from engine.storage.ledger import Ledger, MemoryBudgetError, parse_bytes
from engine.storage.tiers import Lease, Placed, Tiers

__all__ = ["Lease", "Ledger", "MemoryBudgetError", "Placed", "Tiers", "parse_bytes"]
