"""The seed's classic multi-layer perceptron: flatten -> Linear -> ReLU -> ... -> Linear.

Defaults give the seed's 784 -> 128 -> 10 network. It returns logits: the loss applies the
log-softmax (the seed's snippet applied softmax and then a from-logits loss, softmaxing twice,
which flattens gradients; we do not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modelworks.models.registry import register


@dataclass
class MLPConfig:
    in_features: int = 0  # 0: from the data (channels * height * width)
    hidden: int = 128
    n_hidden_layers: int = 1
    n_classes: int = 0  # 0: from the data
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.n_hidden_layers < 1:
            raise ValueError("hidden and n_hidden_layers must be >= 1")


@register("mlp", MLPConfig)
class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        if cfg.in_features <= 0 or cfg.n_classes <= 0:
            raise ValueError("MLPConfig needs in_features and n_classes set (> 0)")
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = cfg.in_features
        for _ in range(cfg.n_hidden_layers):
            layers += [nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        layers.append(nn.Linear(width, cfg.n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) or features (B, F) -> logits (B, n_classes)."""
        return self.net(x.flatten(1))
