"""Faster CPU decoding for large linear layers: oneDNN's pre-packed ("reordered") weights.

On CPU, `F.linear` calls MKL's GEMM, which for the few rows of a decode step (1-16 sequences)
reaches a fraction of the CPU's speed. oneDNN, with the weight reordered once into its blocked
layout, runs the same product faster: on a 124M-parameter model a whole decode step is 1.06x
(1 sequence) to 1.8x (4 sequences) faster (benchmarks/decode_step.py). For small matrices its
per-call cost outweighs the gain at one row, hence `min_numel`; from `SMALL_MIN_ROWS` rows on (a
batched decode step) it wins down to `SMALL_NUMEL`, so smaller layers (the attention projections
of a 135M model) are packed too but take the packed path only for that many rows.

`pack_linears` swaps a model's `nn.Linear` layers for `PackedLinear`, which keeps the original
parameter (state dict, exports and gradients are unchanged) and uses the packed copy only for
float32 CPU inference without gradients. The copy is rebuilt when the weight is changed in place
(its version counter moves), so a model trained further never runs on stale weights. It costs
one extra copy of the packed weights' memory.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

MIN_NUMEL = 1 << 19  # below ~512K weights (e.g. 512 x 1024) oneDNN's call overhead wins
SMALL_NUMEL = 1 << 18  # ... unless the call has SMALL_MIN_ROWS rows or more (576 x 576: 3.6x at 16)
SMALL_MIN_ROWS = 8


def can_pack() -> bool:
    """Whether this torch build has oneDNN's packed linear (CPU builds on x86 and ARM do)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """An `nn.Linear` whose no-grad float32 CPU forward uses a oneDNN-reordered weight."""

    def __init__(self, linear: nn.Linear, batch_hint: int = 16, min_rows: int = 1):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.batch_hint = batch_hint  # oneDNN picks its blocking for about this many rows
        self.min_rows = min_rows  # fewer rows than this take F.linear
        self._packed: torch.Tensor | None = None
        self._packed_version = -1

    def packed_weight(self) -> torch.Tensor:
        w = self.weight
        if self._packed is None or self._packed_version != w._version:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.batch_hint)
            self._packed_version = w._version
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            torch.is_grad_enabled()
            or x.dtype != torch.float32
            or w.dtype != torch.float32
            or x.device.type != "cpu"
            or w.device.type != "cpu"
            or x.numel() < self.min_rows * self.in_features
        ):
            return F.linear(x, w, self.bias)
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), bias, "none", [], "")

    def __deepcopy__(self, memo):  # a plain nn.Linear: oneDNN tensors cannot be deep-copied
        new = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        new.weight = copy.deepcopy(self.weight, memo)
        new.bias = copy.deepcopy(self.bias, memo)
        return new

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def pack_linears(
    model: nn.Module,
    min_numel: int = MIN_NUMEL,
    small_numel: int = SMALL_NUMEL,
    small_min_rows: int = SMALL_MIN_ROWS,
) -> int:
    """Swap every float32 CPU `nn.Linear` of `model` with at least `small_numel` weights for a
    `PackedLinear`, in place: those under `min_numel` take the packed path only for calls of
    `small_min_rows` rows or more. Returns how many were swapped (0 where torch has no oneDNN)."""
    if not can_pack():
        return 0
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
        and child.weight.numel() >= min(min_numel, small_numel)
        and child.weight.dtype == torch.float32
        and child.weight.device.type == "cpu"
    ]
    for parent, name, child in swaps:
        rows = 1 if child.weight.numel() >= min_numel else small_min_rows
        setattr(parent, name, PackedLinear(child, min_rows=rows))
    return len(swaps)
