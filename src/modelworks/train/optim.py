"""Optimizer and learning-rate schedule builders."""

from __future__ import annotations

import math

import torch
from torch import nn


def build_adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]):
    """AdamW with decoupled weight decay on matrices only: norms, biases and embeddings are not
    decayed (decaying a gain or an embedding row only fights the loss)."""
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def cosine_lr(step: int, total: int, peak: float, floor: float, warmup: int) -> float:
    """Linear warmup to `peak`, then cosine decay to `floor` at `total` steps."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
