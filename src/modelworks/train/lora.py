"""LoRA: low-rank adapters on chosen linear layers, merged into the base weights for export.

`apply_lora(model, rank, alpha, dropout, targets, keep)` replaces every `nn.Linear` whose name
matches a target (its last name part, e.g. `query`, or an fnmatch pattern over the full name,
e.g. `layers.*.attn.value`) with a `LoRALinear`: y = W x + b + (alpha / rank) * B A dropout(x),
with A random, B zero (so the wrapped model starts exactly as the base). Every base parameter is
frozen except those under the `keep` modules (a new classification head must still learn).
A and B are plain `nn.Linear` layers, so Opacus computes their per-sample gradients.

`merge_lora(model)` folds B A into W and puts the plain `nn.Linear` back: the result loads as the
base architecture. `adapter_state(model)` is the adapters alone (plus the kept modules).
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from modelworks.errors import LoRAError


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        self.drop = nn.Dropout(dropout)
        self.scale = alpha / rank
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.to(base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_b(self.lora_a(self.drop(x)))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        delta = self.scale * (self.lora_b.weight @ self.lora_a.weight)
        self.base.weight += delta.to(self.base.weight.dtype)
        return self.base


def _matches(name: str, targets: list[str]) -> bool:
    last = name.rsplit(".", 1)[-1]
    return any(t in (last, name) or fnmatch.fnmatchcase(name, t) for t in targets)


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    keep: tuple[str, ...] = (),
) -> int:
    """Wrap matching linear layers in place; returns how many were wrapped."""
    if not targets:
        raise LoRAError("finetune.lora_targets is empty; name at least one linear layer")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for t in targets:
        if not any(_matches(n, [t]) for n, _ in linears):
            names = sorted({n.rsplit(".", 1)[-1] for n, _ in linears})
            raise LoRAError(
                f"finetune.lora_targets: {t!r} matches no linear layer of "
                f"{type(model).__name__}; its linear layers are named {names}"
            )
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for name, module in linears:
        if not _matches(name, targets) or any(name == k or name.startswith(k + ".") for k in keep):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoRALinear(module, rank, alpha, dropout))
        wrapped += 1
    for k in keep:
        kept = getattr(model, k, None)
        if kept is not None:
            for p in kept.parameters():
                p.requires_grad_(True)
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer, in place; returns the (now plain) model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, module.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_state(model: nn.Module, keep: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The LoRA matrices and the kept modules' weights: what a LoRA fine-tune changed."""
    return {
        n: t.detach().cpu().contiguous()
        for n, t in model.state_dict().items()
        if ".lora_a." in n or ".lora_b." in n or any(n.startswith(k + ".") for k in keep)
    }


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
