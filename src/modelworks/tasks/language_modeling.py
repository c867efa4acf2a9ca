"""Language modelling: next-token prediction with cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lm_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in float32 (logits may come out of autocast in bf16)."""
    logits = model(inputs)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def lm_eval_loss(model: nn.Module, batches, device) -> tuple[float, int]:
    """Token-weighted mean loss over `batches` and the number of target tokens."""
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        total += loss.item()
        count += y.numel()
    return total / max(count, 1), count
