"""Optimizer and learning-rate schedule builders, driven by the `pretrain:` config."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool) -> list[dict]:
    """Decay matrices only: norms and biases never, embeddings only when asked (decaying a gain
    or a rarely-seen embedding row mostly fights the loss)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        is_embedding = id(p) in embeddings
        wants = p.dim() >= 2 and (decay_embeddings or not is_embedding)
        (decay if wants else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def mixed_dtensor(params) -> bool:
    """True when some parameters are DTensors and some plain (tensor parallel without FSDP):
    multi-tensor ops cannot take such lists."""
    from torch.distributed.tensor import DTensor

    kinds = {isinstance(p, DTensor) for p in params}
    return len(kinds) == 2


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    foreach = False if mixed_dtensor(model.parameters()) else None
    if cfg.optimizer == "sgd":
        groups = param_groups(model, cfg.weight_decay, cfg.decay_embeddings)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.beta1, foreach=foreach)
    if cfg.optimizer == "adam":  # L2-free Adam, as in the classic recipes
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=foreach)
    groups = param_groups(model, cfg.weight_decay, cfg.decay_embeddings)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=foreach)


def clip_grad_norm(params, max_norm: float) -> float:
    """Clip the global gradient norm; returns it. Handles plain, FSDP (all DTensor) and
    tensor-parallel (mixed) parameters."""
    params = [p for p in params if p.grad is not None]
    if not mixed_dtensor(params):
        norm = nn.utils.clip_grad_norm_(params, max_norm)
        return (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()
    squares = [
        (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).float().pow(2).sum()
        for p in params
    ]
    total = torch.stack(squares).sum().sqrt().item()
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for p in params:
            p.grad.mul_(coef)
    return total


def lr_at(step: int, cfg) -> float:
    """Learning rate for 0-based `step`: linear warmup, then the configured schedule."""
    peak, floor, total, warmup = cfg.lr, cfg.min_lr, cfg.steps, cfg.warmup_steps
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "wsd":  # warmup-stable-decay: flat, then linear decay over the tail
        decay_start = total - max(1, int(cfg.decay_fraction * total))
        if step < decay_start:
            return peak
        return peak + (floor - peak) * (step - decay_start + 1) / (total - decay_start)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
