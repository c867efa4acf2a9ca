"""Box-consistent augmentations for object detection: each image and its boxes move together.

- scale and translate (`zoom`, `shift`): one affine warp per image (torch `affine_grid` +
  `grid_sample`); boxes are mapped by the same x' = s x + t, clipped to the image, and dropped
  when less than `min_visible` of their area stays inside;
- horizontal flip (off by default: a mirrored digit is not a digit);
- brightness and contrast jitter (boxes unchanged).
The generator is reseeded from the loader's position, so a resumed run sees the same batches.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F


class BoxAugment:
    def __init__(
        self,
        zoom: float = 0.0,
        shift: float = 0.0,
        flip: bool = False,
        jitter: float = 0.0,
        min_visible: float = 0.6,
        seed: int = 0,
    ) -> None:
        self.zoom, self.shift, self.flip, self.jitter = zoom, shift, flip, jitter
        self.min_visible, self.seed = min_visible, seed
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, *key) -> None:
        digest = hashlib.sha256(json.dumps([self.seed, *key], default=str).encode()).digest()
        self.generator.manual_seed(int.from_bytes(digest[:8], "big"))

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator)

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) in [0, 1] and targets (N, 6) [image, class, x1, y1, x2, y2] in
        pixels -> the augmented pair."""
        b, _, h, w = x.shape
        s = self._uniform(b, 1 - self.zoom, 1 + self.zoom)
        # the shift is a share of the image; centred so that a zoom keeps the middle in view
        tx = (1 - s) * w / 2 + self._uniform(b, -self.shift, self.shift) * w
        ty = (1 - s) * h / 2 + self._uniform(b, -self.shift, self.shift) * h
        flip = (
            (torch.rand(b, generator=self.generator) < 0.5)
            if self.flip
            else torch.zeros(b, dtype=torch.bool)
        )
        sx = torch.where(flip, -s, s)
        tx = torch.where(flip, w - tx, tx)  # x' = w - (s x + t) for a flipped image
        x, targets = warp(x, targets, sx, s, tx, ty, self.min_visible)
        if self.jitter:
            gain = self._uniform(b, 1 - self.jitter, 1 + self.jitter)[:, None, None, None]
            bias = self._uniform(b, -self.jitter / 2, self.jitter / 2)[:, None, None, None]
            x = (x * gain + bias).clamp(0, 1)
        return x, targets


def warp(
    x: torch.Tensor,
    targets: torch.Tensor,
    sx: torch.Tensor,
    sy: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    min_visible: float = 0.6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp each image by x' = sx x + tx, y' = sy y + ty (pixels; sx < 0 mirrors) and map its
    boxes the same way; outside the source the image is 0."""
    b, _, h, w = x.shape
    # grid_sample wants, per output pixel, its source in [-1, 1] (align_corners=False):
    # n = (n' + 1 - 2t/W) / s - 1 from x' = s x + t with n = 2x/W - 1
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / sx, 1 / sy
    theta[:, 0, 2] = (1 - 2 * tx / w) / sx - 1
    theta[:, 1, 2] = (1 - 2 * ty / h) / sy - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if not len(targets):
        return x, targets
    i = targets[:, 0].long()
    xs = targets[:, [2, 4]] * sx[i, None] + tx[i, None]
    ys = targets[:, [3, 5]] * sy[i, None] + ty[i, None]
    x1, x2 = xs.min(1).values, xs.max(1).values  # a mirror swaps the corners
    y1, y2 = ys.min(1).values, ys.max(1).values
    area = (x2 - x1) * (y2 - y1)
    cx1, cy1, cx2, cy2 = x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)
    visible = (cx2 - cx1).clamp(min=0) * (cy2 - cy1).clamp(min=0)
    keep = visible >= min_visible * area.clamp(min=1e-6)
    out = torch.stack([targets[:, 0], targets[:, 1], cx1, cy1, cx2, cy2], 1)
    return x, out[keep]
