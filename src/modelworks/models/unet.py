"""A small class-conditional U-Net denoiser with its own EMA copy, for image generation.

Notable choices:
- DDPM-style U-Net: per level `blocks_per_level` residual blocks (GroupNorm, SiLU, 3x3 convs),
  a stride-2 convolution down and nearest-neighbour + conv up between levels, skip connections
  concatenated on the way up; no attention (the images are small: 8x8 to 32x32);
- one conditioning vector per image: a sinusoidal embedding of the flow time t in [0, 1] plus a
  learned class embedding, applied as a scale and shift after each block's second norm
  (FiLM / "adaptive GroupNorm"); class index `n_classes` is the "no class" token that
  classifier-free guidance trains with label dropout and samples against;
- the output convolution starts at zero, so the untrained model predicts zero velocity;
- `ema` is an exponential moving average of `net`, kept as buffers (not parameters: the optimizer
  and the parameter count see only `net`), saved in the same safetensors file and used to sample.
  `update_ema()` is called after each optimizer step (tasks/image_generation.py hooks it on).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from modelworks.models.registry import register


@dataclass
class UNetConfig:
    image_size: int = 0  # 0: from the data; must halve cleanly once per extra level
    channels: int = 0  # 0: from the data
    n_classes: int = 0  # 0: from the data (one more embedding row is the "no class" token)
    base_width: int = 32  # channels at full resolution
    width_mults: list[int] = field(default_factory=lambda: [1, 2])  # per level, times base_width
    blocks_per_level: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.width_mults or not all(isinstance(m, int) and m > 0 for m in self.width_mults):
            raise ValueError(f"width_mults must be a list of positive ints, got {self.width_mults}")
        if self.base_width < 8 or self.base_width % 8:
            raise ValueError(f"base_width={self.base_width}: a multiple of 8 (GroupNorm groups)")
        if self.blocks_per_level < 1:
            raise ValueError("blocks_per_level must be >= 1")
        halvings = len(self.width_mults) - 1
        if self.image_size and self.image_size % (2**halvings):
            raise ValueError(
                f"image_size={self.image_size} does not halve {halvings} time(s) cleanly; "
                f"use fewer width_mults or a size divisible by {2**halvings}"
            )


def _norm(width: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, width // 4), width)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as DDPM's integer steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """(x_t (B, C, H, W), t (B,) in [0, 1], class (B,) int64) -> velocity (B, C, H, W)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        if cfg.image_size <= 0 or cfg.channels <= 0 or cfg.n_classes <= 0:
            raise ValueError("UNetConfig needs image_size, channels and n_classes set (> 0)")
        w = cfg.base_width
        emb = 4 * w
        self.time_dim = w
        self.time_mlp = nn.Sequential(nn.Linear(w, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_emb = nn.Embedding(cfg.n_classes + 1, emb)  # last row: no class (CFG)
        self.conv_in = nn.Conv2d(cfg.channels, w, 3, padding=1)
        widths = [w * m for m in cfg.width_mults]
        self.down = nn.ModuleList()
        skips, c = [w], w
        for i, width in enumerate(widths):
            for _ in range(cfg.blocks_per_level):
                self.down.append(ResBlock(c, width, emb, cfg.dropout))
                c = width
                skips.append(c)
            if i < len(widths) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb, cfg.dropout) for _ in range(2)])
        self.up = nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(ResBlock(c + skips.pop(), width, emb, cfg.dropout))
                c = width
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                             nn.Conv2d(c, c, 3, padding=1)))  # fmt: skip
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = self.time_mlp(time_embedding(t, self.time_dim)) + self.class_emb(y)
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, e) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, e)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], 1), e) if isinstance(layer, ResBlock) else layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _frozen_copy(net: nn.Module) -> nn.Module:
    """A copy of `net` whose parameters are buffers: saved and moved with the model, never
    trained, not counted as parameters."""
    ema = copy.deepcopy(net)
    for m in ema.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                del m._parameters[name]
                m.register_buffer(name, p.detach().clone())
    return ema.eval().requires_grad_(False)


@register("unet", UNetConfig)
class UNetDenoiser(nn.Module):
    """The trained `net` and its EMA copy `ema` (what samplers use)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = UNet(cfg)
        self.ema = _frozen_copy(self.net)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.int64))

    @property
    def null_class(self) -> int:
        return self.cfg.n_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, y)

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema <- d * ema + (1 - d) * net, with d warmed up as (1 + n) / (10 + n) so the
        average does not remember the random initialisation for thousands of steps."""
        self.ema_updates += 1
        n = int(self.ema_updates)
        d = min(decay, (1 + n) / (10 + n))
        averaged = dict(self.ema.named_buffers())
        for name, p in self.net.named_parameters():
            averaged[name].lerp_(p.detach().to(averaged[name].dtype), 1 - d)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
