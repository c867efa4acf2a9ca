"""Rectified flow (flow matching on straight paths): the training loss and few-step samplers.

Convention: x_0 is Gaussian noise, x_1 an image scaled to [-1, 1], x_t = (1 - t) x_0 + t x_1,
and the network predicts the constant velocity v = x_1 - x_0. Sampling integrates
dx/dt = v(x, t) from t = 0 to 1: `euler` (one network call per step) or `heun` (two per step,
second order; the last step is plain Euler, as in EDM). Straight paths are why a handful of steps
already gives clean samples.

Classifier-free guidance: training drops the class to the "no class" token with probability
`class_dropout`; sampling mixes v = v_uncond + w (v_cond - v_uncond) (w = 1: plain conditional,
w > 1: more class-typical), both halves in one batched call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SAMPLERS = ("euler", "heun")


def flow_loss(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, null_class: int,
    class_dropout: float,
) -> torch.Tensor:  # fmt: skip
    """Mean squared error of the predicted velocity at a uniform random t (one per image)."""
    noise = torch.randn_like(images)
    t = torch.rand(len(images), device=images.device)
    tt = t[:, None, None, None]
    x_t = (1 - tt) * noise + tt * images
    dropped = torch.rand(len(labels), device=labels.device) < class_dropout
    y = torch.where(dropped, torch.full_like(labels, null_class), labels)
    return F.mse_loss(model(x_t, t, y).float(), (images - noise).float())


def fixed_flow_loss(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int, batch: int = 512
) -> float:
    """The conditional loss with noise and t drawn from `seed`: a validation loss that only
    moves when the model does."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, len(images), batch):
        x1 = images[i : i + batch]
        noise = torch.randn(x1.shape, generator=g).to(x1.device)
        t = torch.rand(len(x1), generator=g).to(x1.device)
        tt = t[:, None, None, None]
        pred = model((1 - tt) * noise + tt * x1, t, labels[i : i + batch]).float()
        total += F.mse_loss(pred, (x1 - noise).float(), reduction="sum").item()
    return total / max(1, images.numel())


@torch.no_grad()
def sample(
    net: nn.Module,
    labels: torch.Tensor,
    shape: tuple[int, int, int],
    null_class: int,
    steps: int = 8,
    guidance: float = 2.0,
    sampler: str = "euler",
    seed: int | None = 0,
    batch: int = 256,
) -> torch.Tensor:
    """Images in [-1, 1] (N, C, H, W) for class indices `labels` (on the net's device); the
    noise is drawn on the CPU from `seed`, so a seed gives the same images on any device."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"steps={steps}: at least 1")
    device = labels.device
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    noise = torch.randn((len(labels), *shape), generator=g)
    outs = [
        _integrate(
            net,
            noise[i : i + batch].to(device),
            labels[i : i + batch],
            null_class,
            steps,
            guidance,
            sampler,
        )  # fmt: skip
        for i in range(0, len(labels), batch)
    ]
    return torch.cat(outs) if outs else noise.to(device)


def _integrate(net, x, y, null_class, steps, guidance, sampler) -> torch.Tensor:
    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((len(x),), t, device=x.device)
        if guidance == 1.0:
            return net(x, tt, y).float()
        null = torch.full_like(y, null_class)
        if guidance == 0.0:
            return net(x, tt, null).float()
        both = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null])).float()
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    ts = torch.linspace(0, 1, steps + 1).tolist()
    for i in range(steps):
        t, dt = ts[i], ts[i + 1] - ts[i]
        v = velocity(x, t)
        if sampler == "heun" and i < steps - 1:
            v = (v + velocity(x + dt * v, ts[i + 1])) / 2
        x = x + dt * v
    return x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 pixels, as an image file would hold them."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1
