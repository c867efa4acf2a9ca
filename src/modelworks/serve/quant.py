"""Int8 weight-only serving: every linear layer's weight as int8 rows with one float32 scale each.

`quantize_int8(model)` swaps a GPT's `nn.Linear` layers (attention, MLP and the output head) for
`Int8Linear`; the token embedding stays float32 (a tied head gets its own int8 copy). Weights take
a quarter of their float32 bytes, and a decode step, which on CPU is bound by reading weights,
reads a quarter as much. The product is computed without materialising float32 weights:

- one row (batch-1 decoding): `(w_int8.float() * x).sum(-1) * scale` under `torch.compile`;
  inductor fuses the conversion into the reduction, so only the int8 bytes are read
  (benchmarks/int8_serving.py measures it; `aten._weight_int8pack_mm` was slower on this CPU);
- several rows: the large output head the same way, broadcast over rows; the small layers
  dequantize and call `F.linear`, cheaper there than the fused loop.

Symmetric per-row absmax quantization (scale = max|w| / 127), as torchao's int8 weight-only.
Inference only: no gradients flow through an Int8Linear.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

_BIG = 1 << 22  # weights above ~4M entries (the output head) take the fused path at any batch


def _matvec(w: torch.Tensor, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (w.to(torch.float32) * x).sum(-1) * scale  # x (1, in) against w (out, in)


def _rows(w: torch.Tensor, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (w.to(torch.float32)[None] * x[:, None, :]).sum(-1) * scale  # x (B, in)


@functools.cache
def _compiled(kind: str):
    fn = _matvec if kind == "matvec" else _rows
    return torch.compile(fn, dynamic=kind == "rows")


class Int8Linear(nn.Module):
    """A bias-free linear layer with int8 weight rows and float32 per-row scales."""

    def __init__(self, linear: nn.Linear, compile: bool = True) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear takes bias-free layers (our GPT has none)")
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("qweight", torch.round(w / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compile = compile

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        if not self.compile or x2.device.type != "cpu":
            y = F.linear(x2, self.dequantized())
        elif x2.shape[0] == 1:
            y = _compiled("matvec")(self.qweight, self.scale, x2)[None]
        elif self.qweight.numel() >= _BIG:
            y = _compiled("rows")(self.qweight, self.scale, x2)
        else:
            y = F.linear(x2, self.dequantized())
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def quantize_int8(model: nn.Module, compile: bool = True) -> nn.Module:
    """Swap every `nn.Linear` under `model` for an `Int8Linear`, in place; returns `model`."""
    with torch.no_grad():
        for module in list(model.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, child_name, Int8Linear(child, compile))
    model.quantized = "int8"
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (a tied weight counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
