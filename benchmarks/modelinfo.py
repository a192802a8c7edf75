"""What the floor needs to know about a checkpoint, read from config.json and safetensors
headers only (no weights are loaded)."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.dtypes import ITEMSIZE

STORED_DTYPE = "bfloat16"  # benchmarks.checkpoints stores every tensor in bf16


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    q_dim: int  # num_heads * head_dim: the width attention scores are taken over
    kv_dim: int  # num_kv_heads * head_dim (smaller than q_dim under GQA)
    vocab_size: int
    weight_bytes: int  # every tensor, in `dtype` (from_dir: as stored)
    matmul_params: int  # weights of the per-token matmuls in the decoder layers (+ projections)
    head_params: int  # the LM head matmul (the tied embedding when tied)
    layer_bytes: int  # the largest unit streamed at once: a decoder layer, or the LM head
    dtype: str = STORED_DTYPE  # what a run holds weights and KV cache in (the bytes above too)

    @property
    def dtype_bytes(self) -> int:
        return ITEMSIZE[self.dtype]

    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token across all layers."""
        return 2 * self.num_layers * self.kv_dim * self.dtype_bytes

    def in_dtype(self, dtype: str) -> ModelShape:
        """The shape as a run in `dtype` holds it: weight and layer bytes scaled by itemsize."""
        scale = ITEMSIZE[dtype] / self.dtype_bytes
        return replace(self, dtype=dtype, weight_bytes=round(self.weight_bytes * scale),
                       layer_bytes=round(self.layer_bytes * scale))

    @classmethod
    def from_dir(cls, model_dir: Path | str) -> ModelShape:
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        tensors = read_tensor_headers(model_dir)
        return cls.from_parts(config, tensors)

    @classmethod
    def from_parts(cls, config: dict, tensors: dict[str, tuple[list[int], int]]) -> ModelShape:
        """config: config.json as a dict; tensors: name -> (shape, nbytes)."""
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        kv_heads = config.get("num_key_value_heads") or heads
        head_name = "lm_head.weight" if "lm_head.weight" in tensors else _embed_name(tensors)
        matmul = sum(
            _numel(shape)
            for name, (shape, _) in tensors.items()
            if len(shape) == 2 and "embed" not in name and name != "lm_head.weight"
        )
        return cls(
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            q_dim=heads * head_dim,
            kv_dim=kv_heads * head_dim,
            vocab_size=config["vocab_size"],
            weight_bytes=sum(nbytes for _, nbytes in tensors.values()),
            matmul_params=matmul,
            head_params=_numel(tensors[head_name][0]),
            layer_bytes=max(_largest_layer_bytes(tensors), tensors[head_name][1]),
        )


def read_tensor_headers(model_dir: Path) -> dict[str, tuple[list[int], int]]:
    """name -> (shape, nbytes) for every tensor in the directory's safetensors files."""
    out: dict[str, tuple[list[int], int]] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            begin, end = meta["data_offsets"]
            out[name] = (list(meta["shape"]), end - begin)
    if not out:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    return out


def model_files(model_dir: Path | str) -> list[Path]:
    return sorted(p for p in Path(model_dir).iterdir() if p.is_file())


def _largest_layer_bytes(tensors: dict[str, tuple[list[int], int]]) -> int:
    per_layer: dict[str, int] = {}
    for name, (_, nbytes) in tensors.items():
        match = re.search(r"layers\.(\d+)\.", name)
        if match:
            per_layer[match.group(1)] = per_layer.get(match.group(1), 0) + nbytes
    return max(per_layer.values(), default=0)


def _embed_name(tensors: dict[str, tuple[list[int], int]]) -> str:
    for name in tensors:
        if name.endswith("embed_tokens.weight"):
            return name
    raise KeyError("no lm_head.weight and no *embed_tokens.weight in the checkpoint")


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
