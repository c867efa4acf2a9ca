"""A Vision Transformer (ViT, Dosovitskiy et al. 2020) for image classification.

Notable choices:
- patches embedded by one strided Conv2d (kernel = stride = patch_size), the same as flattening
  each patch and applying a shared Linear;
- a learned class token and learned absolute position embeddings; the token is a 1-D parameter
  and the positions an `nn.Embedding`, so AdamW's rule (decay matrices, not embeddings) leaves
  both undecayed;
- pre-norm blocks (LayerNorm, as in ViT) with GELU MLPs; bidirectional attention through
  `scaled_dot_product_attention` with no mask: every patch sees every other;
- the head reads the class token after a final LayerNorm;
- `blocks` is an `nn.ModuleList`, so train/parallel.py can checkpoint or shard it block by block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modelworks.models.registry import register


@dataclass
class ViTConfig:
    image_size: int = 0  # 0: from the data; height = width
    channels: int = 0  # 0: from the data
    n_classes: int = 0  # 0: from the data
    patch_size: int = 4  # must divide image_size; (image_size / patch_size)^2 tokens + 1
    d_model: int = 64
    n_layer: int = 4
    n_head: int = 4
    mlp_ratio: float = 2.0  # MLP hidden width = mlp_ratio * d_model
    dropout: float = 0.0  # on attention weights, after each residual branch, before the head

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.patch_size < 1 or self.n_layer < 1 or self.mlp_ratio <= 0:
            raise ValueError("patch_size and n_layer must be >= 1 and mlp_ratio > 0")
        if self.image_size and self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} does not divide image_size={self.image_size}"
            )

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Attention(nn.Module):
    """Multi-head self-attention; bidirectional (ViT) or causal (SASRec reuses these blocks).
    `cfg` is any config with d_model, n_head and dropout."""

    def __init__(self, cfg, causal: bool = False) -> None:
        super().__init__()
        self.n_head, self.dropout, self.causal = cfg.n_head, cfg.dropout, causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, T) attention probabilities for this layer's input (explain)."""
        B, T, C = x.shape
        q, k, _ = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(C // self.n_head)
        if self.causal:
            keep = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        return scores.softmax(-1)


class Block(nn.Module):
    """Pre-norm block: LayerNorm, attention, LayerNorm, GELU MLP (`cfg` also has mlp_ratio)."""

    def __init__(self, cfg, causal: bool = False) -> None:
        super().__init__()
        hidden = round(cfg.mlp_ratio * cfg.d_model)
        self.attn_norm = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg, causal)
        self.mlp_norm = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, hidden), nn.GELU(), nn.Linear(hidden, cfg.d_model)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x)))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


@register("vit", ViTConfig)
class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.image_size <= 0 or cfg.channels <= 0 or cfg.n_classes <= 0:
            raise ValueError("ViTConfig needs image_size, channels and n_classes set (> 0)")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(
                f"patch_size={cfg.patch_size} does not divide image_size={cfg.image_size}"
            )
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(
            cfg.channels, cfg.d_model, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(cfg.d_model))
        self.pos_emb = nn.Embedding(cfg.n_patches + 1, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # ViT's init: truncated-normal(0.02) tokens and positions, Xavier linears, zero biases
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_emb.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as the Linear it stands for
        nn.init.zeros_(self.patch_embed.bias)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the final-norm token states (B, 1 + n_patches, d_model)."""
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, n_patches, d_model)
        # x.shape[0], not len(x): len() is a plain int, so ONNX/torch.export would fix the batch
        cls = self.cls_token.to(patches.dtype).expand(x.shape[0], 1, -1)
        h = self.drop(torch.cat([cls, patches], dim=1) + self.pos_emb.weight)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, n_classes), read from the class token."""
        return self.head(self.drop(self.tokens(x)[:, 0]))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
