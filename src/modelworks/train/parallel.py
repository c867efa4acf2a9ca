"""Apply training-time wrappers to a plain model, from outside (torchtitan's `parallelize` order):
activation checkpointing, then compile. Models never import any of this.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each transformer block in backward instead of storing its activations.

    Works on any model with a `blocks` ModuleList; patches the instances' `forward`, so parameter
    names (and so checkpoints) are unchanged. Returns the number of blocks wrapped.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"activation checkpointing needs a model with a `blocks` ModuleList; "
            f"{type(model).__name__} has none"
        )
    for block in blocks:
        inner = block.forward
        block.forward = functools.partial(checkpoint, inner, use_reentrant=False)
    return len(blocks)


def parallelize(model: nn.Module, cfg) -> nn.Module:
    """The module the training loop calls; `model` itself stays the one saved and loaded."""
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile:
        return torch.compile(model)
    return model
