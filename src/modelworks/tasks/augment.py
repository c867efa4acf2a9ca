"""Training-time image augmentation on float batches (B, C, H, W), without torchvision.

Three transforms, each off unless asked for, applied in this order to every training batch:
- rotation by an angle drawn uniformly in [-rotate_degrees, rotate_degrees] (bilinear);
- random crop with padding: pad by `crop_padding` pixels, cut a random window of the original
  size back out (a shift of up to `crop_padding` pixels each way);
- horizontal flip of half the images (off by default: a flipped digit is another symbol).
Pixels that enter from outside the image repeat the border (replicate padding), so a dark
background stays dark whatever the normalisation.

All randomness comes from the augmentation's own seeded `torch.Generator`, never torch's global
RNG. `AugmentedLoader` reseeds it before every batch from (seed, rank, the loader's position), so
a batch's augmentation is a pure function of where the loader stands: a resumed run draws exactly
what an uninterrupted one would, with nothing extra to checkpoint, and each rank draws its own.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
import torch.nn.functional as F


class Augment:
    """Random augmentation of float image batches; `augment(x)` -> a new tensor, same shape."""

    def __init__(self, crop_padding: int, flip: bool, rotate_degrees: float, seed: int) -> None:
        if crop_padding < 0 or rotate_degrees < 0:
            raise ValueError("crop_padding and rotate_degrees must be >= 0")
        self.crop_padding, self.flip, self.rotate_degrees = crop_padding, flip, rotate_degrees
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, *key) -> None:
        """Restart the generator from (seed, *key); key items must be JSON-serialisable."""
        digest = hashlib.sha256(
            json.dumps([self.seed, *key], sort_keys=True, default=str).encode()
        ).digest()
        self.generator.manual_seed(int.from_bytes(digest[:8], "big"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        if self.rotate_degrees:
            x = self.rotate(x)
        if self.crop_padding:
            x = self.crop(x)
        if self.flip:
            x = self.hflip(x)
        return x

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        angles = self._uniform(len(x), -self.rotate_degrees, self.rotate_degrees) * math.pi / 180
        cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
        theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).view(-1, 2, 3)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        p = self.crop_padding
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        top = torch.randint(0, 2 * p + 1, (B,), generator=self.generator)
        left = torch.randint(0, 2 * p + 1, (B,), generator=self.generator)
        rows = (top[:, None] + torch.arange(H))[:, :, None]  # (B, H, 1)
        cols = (left[:, None] + torch.arange(W))[:, None, :]  # (B, 1, W)
        batch = torch.arange(B)[:, None, None]
        # advanced indices around a slice put their broadcast dims first: (B, H, W, C)
        return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()

    def hflip(self, x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(x), generator=self.generator) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


def make_augment(
    crop_padding: int = 0, flip: bool = False, rotate_degrees: float = 0.0, seed: int = 0
) -> Augment | None:
    """The configured augmentation, or None when every transform is off."""
    if not (crop_padding or flip or rotate_degrees):
        return None
    return Augment(crop_padding, flip, rotate_degrees, seed)


class AugmentedLoader:
    """Wraps a training loader: the first tensor of each batch (the images) augmented on the fly.
    Its state is the inner loader's, unchanged: the augmentation follows from the position."""

    def __init__(self, loader, augment: Augment, rank: int = 0) -> None:
        self.loader, self.augment, self.rank = loader, augment, rank

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        self.augment.reseed(self.rank, self.loader.state_dict())
        x, *rest = self.loader.next_batch()
        return (self.augment(x), *rest)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
