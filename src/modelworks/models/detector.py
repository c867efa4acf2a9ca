"""A small anchor-free object detector in the CenterNet style ("Objects as Points", Zhou et al.
2019), sized to train on a couple of CPU cores.

Notable choices:
- backbone: a stem and `len(widths)` stages of two 3x3 conv-BatchNorm-ReLU layers, each stage
  halving the resolution (stride 2, 4, 8, ...); the last stage is upsampled and added to the
  stride-4 stage (a one-step feature pyramid), so the output map is 1/4 of the input;
- one shared 3x3 head with three outputs per cell: a class heatmap (sigmoid; its bias starts at
  -2.19, prior 0.1, as CenterNet), the box size (w, h) in cells and the sub-cell offset of the
  centre; a box is a heatmap peak (3x3 max-pool), no anchors;
- loss (`detection_loss`): penalty-reduced focal loss on Gaussian-splatted centres, L1 on the
  offset, and L1 plus GIoU on the box at each object's centre cell;
- decoding keeps the top `max_detections` peaks and applies class-wise NMS (models/boxes.py),
  which only removes near-duplicates: the heatmap peaks are already one per object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from modelworks.models.boxes import batched_nms
from modelworks.models.registry import register

STRIDE = 4  # output map: 1/4 of the input


@dataclass
class DetectorConfig:
    image_size: int = 0  # 0: from the data; a multiple of 2^len(widths)
    channels: int = 0  # 0: from the data
    n_classes: int = 0  # 0: from the data
    widths: list[int] = field(default_factory=lambda: [32, 64, 96])  # stages at stride 2, 4, 8...
    head_width: int = 64  # channels of the stride-4 map and the head
    nms_iou: float = 0.6  # decoding: same-class boxes overlapping more than this are duplicates

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or not all(isinstance(w, int) and w > 0 for w in self.widths):
            raise ValueError(
                f"widths: at least 2 positive ints (strides 2, 4, ...), got {self.widths}"
            )
        if self.image_size and self.image_size % 2 ** len(self.widths):
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of {2 ** len(self.widths)} "
                f"({len(self.widths)} stages, each halving it)"
            )


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


@register("detector", DetectorConfig)
class Detector(nn.Module):
    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        if cfg.image_size <= 0 or cfg.channels <= 0 or cfg.n_classes <= 0:
            raise ValueError("DetectorConfig needs image_size, channels and n_classes set (> 0)")
        self.cfg = cfg
        stages, width = [], cfg.channels
        for w in cfg.widths:
            stages.append(nn.Sequential(_conv(width, w, 2), _conv(w, w)))
            width = w
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.Conv2d(cfg.widths[1], cfg.head_width, 1)
        self.top = nn.Conv2d(cfg.widths[-1], cfg.head_width, 1)
        self.merge = _conv(cfg.head_width, cfg.head_width)
        self.head = _conv(cfg.head_width, cfg.head_width)
        self.out = nn.Conv2d(cfg.head_width, cfg.n_classes + 4, 1)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[: cfg.n_classes] = -2.19  # sigmoid prior 0.1 on the heatmap
            self.out.bias[cfg.n_classes + 2 :] = 1.0  # sizes start near e^1 = 2.7 cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> (B, n_classes + 4, H/4, W/4): heatmap logits, then the centre
        offset (x, y, in cells) and the log box size (w, h, in cells) per cell."""
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        top = self.top(feats[-1])
        lateral = self.lateral(feats[1])
        y = self.merge(lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest"))
        return self.out(self.head(y))

    @torch.no_grad()
    def detect(
        self, x: torch.Tensor, score_threshold: float = 0.05, max_detections: int = 100
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: {"boxes" (N, 4) [x1, y1, x2, y2] in input pixels, "scores", "labels"},
        best first."""
        return decode(self(x).float(), self.cfg.n_classes, score_threshold, max_detections,
                      self.cfg.nms_iou)  # fmt: skip


def decode(
    out: torch.Tensor, n_classes: int, score_threshold: float, max_detections: int, nms_iou: float
) -> list[dict[str, torch.Tensor]]:
    """Raw maps (B, n_classes + 4, h, w) -> boxes, scores and labels per image (see detect)."""
    b, _, h, w = out.shape
    heat = torch.sigmoid(out[:, :n_classes])
    peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
    k = min(max_detections, n_classes * h * w)
    scores, idx = peaks.reshape(b, -1).topk(k)
    labels, cell = idx // (h * w), idx % (h * w)
    cy, cx = (cell // w).float(), (cell % w).float()
    reg = out[:, n_classes:].reshape(b, 4, -1)
    reg = torch.gather(reg, 2, cell[:, None, :].expand(b, 4, k))
    px, py = (cx + reg[:, 0]) * STRIDE, (cy + reg[:, 1]) * STRIDE
    half_w = reg[:, 2].clamp(max=8).exp() * STRIDE / 2
    half_h = reg[:, 3].clamp(max=8).exp() * STRIDE / 2
    boxes = torch.stack([px - half_w, py - half_h, px + half_w, py + half_h], -1)
    results = []
    for i in range(b):
        keep = scores[i] >= score_threshold
        bx, sc, lb = boxes[i][keep], scores[i][keep], labels[i][keep]
        kept = batched_nms(bx, sc, lb, nms_iou)
        results.append({"boxes": bx[kept], "scores": sc[kept], "labels": lb[kept]})
    return results


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of matching rows of two (N, 4) corner-box tensors."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda t: (t[:, 2] - t[:, 0]).clamp(min=0) * (t[:, 3] - t[:, 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(-1)
    return inter / union.clamp(min=1e-6) - (hull - union) / hull.clamp(min=1e-6)


def detection_loss(out: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """CenterNet's loss. `targets` (N, 6): [image index, class, x1, y1, x2, y2] in input pixels,
    one row per object of the batch."""
    b, _, h, w = out.shape
    logits = out[:, :n_classes].float()
    t = targets.float()
    img, cls = t[:, 0].long(), t[:, 1].long()
    box = t[:, 2:] / STRIDE  # in cells
    centre = (box[:, :2] + box[:, 2:]) / 2
    ci = centre.floor().clamp(min=0)
    ci = torch.stack([ci[:, 0].clamp(max=w - 1), ci[:, 1].clamp(max=h - 1)], -1)
    size = (box[:, 2:] - box[:, :2]).clamp(min=1e-3)
    # a Gaussian per object on its class's map, peak 1 at the centre cell (TTFNet's elliptic
    # sigma: about a sixth of the box each way), maps merged with max
    sigma = (size * 0.54 / 3).clamp(min=0.4)
    gx = torch.arange(w, dtype=torch.float32)
    gy = torch.arange(h, dtype=torch.float32)
    ex = ((gx[None] - ci[:, :1]) ** 2) / (2 * sigma[:, :1] ** 2)
    ey = ((gy[None] - ci[:, 1:]) ** 2) / (2 * sigma[:, 1:] ** 2)
    gauss = torch.exp(-(ey[:, :, None] + ex[:, None, :]))  # (N, h, w)
    cells = torch.arange(h * w)
    where = ((img * n_classes + cls)[:, None] * (h * w) + cells[None]).reshape(-1)
    heat = torch.zeros(b * n_classes * h * w).scatter_reduce_(0, where, gauss.reshape(-1), "amax")
    heat = heat.reshape(b, n_classes, h, w).to(logits.device)
    # penalty-reduced focal loss (alpha 2, beta 4), normalised by the number of objects
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = heat == 1
    pos_loss = -(torch.log(p) * (1 - p) ** 2)[pos].sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - heat) ** 4)[~pos].sum()
    n = max(len(t), 1)
    focal = (pos_loss + neg_loss) / n
    if not len(t):
        return focal
    reg = out[img, n_classes:, ci[:, 1].long(), ci[:, 0].long()].float()  # (N, 4)
    off_t = (centre - ci).to(reg.device)
    off_loss = F.l1_loss(reg[:, :2], off_t)
    size_loss = F.l1_loss(reg[:, 2:], size.log().to(reg.device))
    pc = ci.to(reg.device) + reg[:, :2]
    half = reg[:, 2:].clamp(max=8).exp() / 2
    pred = torch.cat([pc - half, pc + half], -1)
    giou_loss = (1 - _giou(pred, box.to(reg.device))).mean()
    return focal + off_loss + 0.5 * size_loss + 2.0 * giou_loss
