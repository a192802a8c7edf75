"""4-bit group-wise quantization, as FlexGen compresses weights and the KV cache.

Values are split into groups of `group_size` along `dim`; each group keeps its min and scale
and every value becomes a 4-bit code; two codes share a byte. `to_bytes`/`from_bytes` turn the
result into one flat uint8 buffer so that any tier can hold it like a plain tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantMeta:
    shape: tuple[int, ...]  # of the original tensor
    dtype: torch.dtype
    bits: int
    group_size: int
    dim: int

    @property
    def num_groups(self) -> int:
        size = self.shape[self.dim]
        rest = int(torch.Size(self.shape).numel()) // size
        return rest * -(-size // self.group_size)

    @property
    def packed_bytes(self) -> int:
        return self.num_groups * self.group_size * self.bits // 8

    @property
    def nbytes(self) -> int:
        """Bytes of the flat buffer: codes, then per-group min and scale."""
        return self.packed_bytes + 2 * self.num_groups * self.dtype.itemsize


def quant_ratio(dtype: torch.dtype, group_size: int = 64) -> float:
    """Bytes of 4-bit codes plus group min and scale per byte of the `dtype` tensor."""
    return (group_size // 2 + 2 * dtype.itemsize) / (group_size * dtype.itemsize)


def plan_quant(
    shape: tuple[int, ...], dtype: torch.dtype, group_size: int = 64, dim: int = -1
) -> QuantMeta:
    """The layout `quantize` will use; groups shrink (to an even size) along a short dim."""
    dim = dim % len(shape)
    group_size = min(group_size, shape[dim] + shape[dim] % 2)
    assert group_size % 2 == 0, "two codes share a byte"
    return QuantMeta(tuple(shape), dtype, 4, group_size, dim)


def quantize(
    x: torch.Tensor, bits: int = 4, group_size: int = 64, dim: int = -1
) -> tuple[torch.Tensor, QuantMeta]:
    """x -> (flat uint8 buffer [nbytes], meta)."""
    assert bits == 4, "only 4-bit codes are packed"
    dim = dim % x.dim()
    meta = plan_quant(tuple(x.shape), x.dtype, group_size, dim)
    groups = _groups(x.float(), meta.group_size, dim)  # [G, group_size]
    low = groups.amin(dim=1, keepdim=True)  # [G, 1]
    scale = (groups.amax(dim=1, keepdim=True) - low).clamp(min=1e-8) / (2**bits - 1)
    codes = ((groups - low) / scale).round_().clamp_(0, 2**bits - 1).to(torch.uint8)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)  # [G, group_size / 2]
    side = torch.cat([low, scale], dim=1).to(x.dtype).contiguous()  # [G, 2]
    flat = torch.cat([packed.reshape(-1), side.view(-1).view(torch.uint8)])
    return flat, meta


def dequantize(flat: torch.Tensor, meta: QuantMeta) -> torch.Tensor:
    """Inverse of `quantize` (up to rounding), on flat's device, in meta.dtype."""
    packed = flat[: meta.packed_bytes].view(meta.num_groups, meta.group_size // 2)
    side = flat[meta.packed_bytes :].view(meta.dtype).view(meta.num_groups, 2).float()
    codes = torch.stack([packed & 0xF, packed >> 4], dim=2).view(meta.num_groups, -1)
    groups = codes.float() * side[:, 1:] + side[:, :1]  # [G, group_size]
    return _ungroup(groups, meta).to(meta.dtype).contiguous()


def _groups(x: torch.Tensor, group_size: int, dim: int) -> torch.Tensor:
    moved = x.movedim(dim, -1)
    pad = (-moved.shape[-1]) % group_size
    if pad:
        moved = torch.nn.functional.pad(moved, (0, pad))
    return moved.reshape(-1, group_size)


def _ungroup(groups: torch.Tensor, meta: QuantMeta) -> torch.Tensor:
    moved_shape = list(meta.shape)
    size = moved_shape.pop(meta.dim)
    padded = -(-size // meta.group_size) * meta.group_size
    moved = groups.reshape(*moved_shape, padded)[..., :size]
    return moved.movedim(-1, meta.dim)
