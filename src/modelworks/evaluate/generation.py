"""Metrics and pictures for image generation: Frechet distance, a per-class Gaussian baseline,
nearest-training-image distances, sample grids and the FID curve.

FID here is the Frechet distance between Gaussians fitted to *our own* classifier's features
(the judge the image_generation task trains on the same data), not Inception's: the numbers
compare models and baselines within the project, they are not comparable to published FIDs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the closed form for two Gaussians.
    A near-singular product gets a small ridge (as pytorch-fid does); tiny imaginary parts
    from round-off are dropped."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


class GaussianBaseline:
    """Per class: the pixel mean and covariance of the training images (a small ridge keeps the
    covariance positive definite); samples are clipped to the pixel range like the model's."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ridge: float = 1e-3) -> None:
        flat = images.reshape(len(images), -1).double()
        self.shape = tuple(images.shape[1:])
        self.params = {}
        for c in labels.unique().tolist():
            x = flat[labels == c]
            mean = x.mean(0)
            cov = torch.cov(x.T) if len(x) > 1 else torch.zeros(len(mean), len(mean))
            cov = cov + ridge * torch.eye(len(mean), dtype=cov.dtype)
            self.params[c] = (mean, torch.linalg.cholesky(cov))

    def sample(self, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        out = torch.empty((len(labels), int(np.prod(self.shape))), dtype=torch.float64)
        for i, c in enumerate(labels.tolist()):
            mean, chol = self.params[c]
            out[i] = mean + chol @ torch.randn(len(mean), generator=g, dtype=torch.float64)
        return out.float().clamp(-1, 1).reshape(len(labels), *self.shape)


EXACT = "donot_use_mm_for_euclid_dist"  # the matmul shortcut leaves ~1e-3 for identical rows


def nearest_distances(samples: torch.Tensor, train: torch.Tensor, batch: int = 1024) -> np.ndarray:
    """Per sample, the RMS pixel distance (images in [-1, 1], so 0..2) to its nearest training
    image: near 0 means a copy."""
    a = samples.reshape(len(samples), -1).float()
    b = train.reshape(len(train), -1).float()
    out = []
    for i in range(0, len(a), batch):
        out.append(torch.cdist(a[i : i + batch], b, compute_mode=EXACT).min(1).values)
    d = torch.cat(out) if out else torch.zeros(0)
    return (d / a.shape[1] ** 0.5).numpy()


def _show(ax, img: np.ndarray) -> None:
    ax.axis("off")
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")


def plot_grid(rows: list[np.ndarray], row_titles: list[str], path: Path, title: str) -> None:
    """One row of uint8 images (K, C, H, W) per entry of `rows`, titled on the left."""
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(0.9 * cols + 1.2, 0.9 * len(rows) + 0.6),
                             dpi=100, squeeze=False)  # fmt: skip
    for r, (imgs, name) in enumerate(zip(rows, row_titles, strict=True)):
        for c in range(cols):
            ax = axes[r, c]
            if c < len(imgs):
                _show(ax, imgs[c])
            else:
                ax.axis("off")
        axes[r, 0].text(-0.15, 0.5, name, transform=axes[r, 0].transAxes, ha="right",
                        va="center", fontsize=8)  # fmt: skip
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_fid_curve(records: list[dict], path: Path, lines: dict[str, float]) -> bool:
    """Validation FID against training step, with horizontal lines for the baselines."""
    import matplotlib.pyplot as plt

    points = [(r["step"], r["val_fid"]) for r in records if "val_fid" in r]
    if not points:
        return False
    steps, values = zip(*points, strict=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, values, marker="o", label="model (EMA samples), validation labels")
    for (name, value), style in zip(lines.items(), ("--", ":", "-."), strict=False):
        ax.axhline(value, linestyle=style, color="gray", label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (judge features)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
