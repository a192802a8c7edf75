"""What one forward step of one GPU batch needs besides weights: positions and the mask.

Rows are left-padded to a common length so that every row writes its new keys at the same
cache column. `valid` marks the cache columns that hold real tokens for each row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepInputs:
    positions: torch.Tensor  # [B, T] int64, position of each new token within its own row
    mask: torch.Tensor  # [B, 1, T, S] bool, True where a query may attend to a key
    start: int  # cache column where the T new tokens are written; S = start + T

    @classmethod
    def build(
        cls, valid: torch.Tensor, start: int, num_new: int, window: int | None = None
    ) -> StepInputs:
        """valid: [B, S_cap] bool, real-token columns (already set for the new tokens)."""
        end = start + num_new
        keys = valid[:, :end]  # [B, S]
        positions = keys.long().cumsum(dim=-1) - 1  # [B, S] rank among the row's real tokens
        query_cols = torch.arange(start, end, device=valid.device)  # [T]
        key_cols = torch.arange(end, device=valid.device)  # [S]
        causal = key_cols[None, :] <= query_cols[:, None]  # [T, S]
        if window is not None:
            causal &= key_cols[None, :] > query_cols[:, None] - window
        mask = causal[None, None] & keys[:, None, None, :]  # [B, 1, T, S]
        # A padding query would see no key at all (a NaN row); let it see itself.
        mask |= (key_cols[None, :] == query_cols[:, None])[None, None]
        return cls(positions=positions[:, start:end].clamp(min=0), mask=mask, start=start)
