"""A small VGG-style convolutional network for image classification.

Notable choices:
- stages of `convs_per_stage` 3x3 convolutions, each followed by a norm and ReLU, and a 2x2 max
  pool after every stage: stage i has `widths[i]` channels at 1/2^i of the input resolution;
- BatchNorm by default (convolutions then carry no bias: the norm's shift replaces it); `group`
  (GroupNorm) does not depend on the batch, for tiny batches or per-rank batches under DDP;
- global average pooling before the linear head, so the head's size does not depend on the
  image size (image_size only has to survive the poolings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from modelworks.models.registry import register

NORMS = ("batch", "group", "none")


@dataclass
class CNNConfig:
    image_size: int = 0  # 0: from the data; must be >= 2^len(widths) (one halving per stage)
    channels: int = 0  # 0: from the data
    n_classes: int = 0  # 0: from the data
    widths: list[int] = field(default_factory=lambda: [32, 64])  # channels per stage
    convs_per_stage: int = 2
    norm: str = "batch"  # batch, group (GroupNorm, 8 channels per group) or none
    dropout: float = 0.0  # before the head

    def __post_init__(self) -> None:
        if not self.widths or not all(isinstance(w, int) and w > 0 for w in self.widths):
            raise ValueError(f"widths must be a non-empty list of positive ints, got {self.widths}")
        if self.convs_per_stage < 1:
            raise ValueError("convs_per_stage must be >= 1")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: expected one of {NORMS}")
        if self.image_size and self.image_size < 2 ** len(self.widths):
            raise ValueError(
                f"image_size={self.image_size} is too small for {len(self.widths)} stages "
                f"(each halves it); use fewer widths or larger images"
            )


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "group":
        return nn.GroupNorm(max(1, width // 8), width)
    return nn.Identity()


@register("cnn", CNNConfig)
class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        if cfg.image_size <= 0 or cfg.channels <= 0 or cfg.n_classes <= 0:
            raise ValueError("CNNConfig needs image_size, channels and n_classes set (> 0)")
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = cfg.channels
        for out in cfg.widths:
            for _ in range(cfg.convs_per_stage):
                conv = nn.Conv2d(width, out, 3, padding=1, bias=cfg.norm == "none")
                layers += [conv, _norm(cfg.norm, out), nn.ReLU(inplace=True)]
                width = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(width, cfg.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, n_classes)."""
        return self.head(self.features(x))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
