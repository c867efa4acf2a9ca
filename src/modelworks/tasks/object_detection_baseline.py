"""The detection baseline scored next to the detector: sliding windows over a digit classifier,
then class-wise NMS (the pre-deep-learning recipe).

The classifier is a multinomial logistic regression (scikit-learn) on 8x8 crops of the training
split: each true box's crop labelled by its class, plus random windows overlapping no box by more
than IoU 0.3 labelled background. At test time windows of several sizes and two aspect ratios
slide over the image (every crop resized to 8x8 by resizing the whole image, then unfolded), each
window's score is its best non-background probability, and NMS keeps the local maxima.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from modelworks.models.boxes import batched_nms, box_iou

CROP = 8  # windows are resized to CROP x CROP before the classifier
HEIGHTS = (12, 16, 20, 24, 28)  # window heights in pixels (at the model's image size)
ASPECTS = (1.0, 0.7)  # width / height


def _crops(x: torch.Tensor, boxes: torch.Tensor) -> np.ndarray:
    """8x8 crops (N, 64) of boxes [image, x1, y1, x2, y2] from float images (B, 1, H, W)."""
    out = []
    for i, x1, y1, x2, y2 in boxes.tolist():
        a, b = int(max(0, round(y1))), int(max(round(y2), round(y1) + 1))
        c, d = int(max(0, round(x1))), int(max(round(x2), round(x1) + 1))
        patch = x[int(i), :1, a:b, c:d][None]
        out.append(F.interpolate(patch, size=(CROP, CROP), mode="area").reshape(-1).numpy())
    return np.stack(out) if out else np.zeros((0, CROP * CROP))


def fit(x: torch.Tensor, targets: torch.Tensor, n_classes: int, seed: int = 0):
    """The window classifier, trained on uint8 images (N, C, S, S) and boxes (M, 6)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    xf = x.float() / 255
    size = x.shape[-1]
    pos = _crops(xf, targets[:, [0, 2, 3, 4, 5]])
    neg_boxes = []
    while len(neg_boxes) < max(len(pos), 200):
        i = int(rng.integers(len(x)))
        h = float(rng.choice(HEIGHTS))
        w = h * float(rng.choice(ASPECTS))
        x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        cand = torch.tensor([[x1, y1, x1 + w, y1 + h]])
        mine = targets[targets[:, 0] == i][:, 2:]
        if not len(mine) or box_iou(cand, mine).max() <= 0.3:
            neg_boxes.append([i, x1, y1, x1 + w, y1 + h])
    neg = _crops(xf, torch.tensor(neg_boxes))
    features = np.concatenate([pos, neg])
    labels = np.concatenate([targets[:, 1].long().numpy(), np.full(len(neg), n_classes)])
    clf = LogisticRegression(max_iter=100, C=1.0)
    clf.fit(features, labels)
    return clf


def detect(clf, x: torch.Tensor, n_classes: int, max_detections: int = 100, stride: float = 3):
    """Per image: (boxes (N, 4), scores (N,), labels (N,)) as numpy, best first."""
    xf = x.float()[:, :1] / 255
    b, _, h, w = xf.shape
    boxes, probs = [], []
    for wh in HEIGHTS:
        for aspect in ASPECTS:
            ww = wh * aspect
            sy, sx = CROP / wh, CROP / ww  # resize so that a window becomes CROP x CROP
            small = F.interpolate(xf, size=(round(h * sy), round(w * sx)), mode="area")
            step = max(1, round(stride * sy))
            patches = F.unfold(small, CROP, stride=step)  # (B, 64, L)
            ny = (small.shape[-2] - CROP) // step + 1
            nx = (small.shape[-1] - CROP) // step + 1
            gy, gx = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            y1 = gy.reshape(-1) * step / sy
            x1 = gx.reshape(-1) * step / sx
            boxes.append(torch.stack([x1, y1, x1 + ww, y1 + wh], -1))
            part = clf.predict_proba(patches.permute(0, 2, 1).reshape(-1, CROP * CROP).numpy())
            p = np.zeros((len(part), n_classes + 1), dtype=np.float32)
            p[:, clf.classes_] = part  # a class the training crops lack keeps probability 0
            probs.append(torch.from_numpy(p).reshape(b, -1, n_classes + 1))
    all_boxes = torch.cat(boxes)
    all_probs = torch.cat(probs, 1)[..., :n_classes]  # the last column is background
    results = []
    for i in range(b):
        score, label = all_probs[i].max(-1)
        top = score.topk(min(len(score), 4 * max_detections)).indices  # NMS is quadratic
        top = top[score[top] > 0.05]
        bx, sc, lb = all_boxes[top], score[top], label[top]
        kept = batched_nms(bx, sc, lb, 0.3)[:max_detections]
        results.append((bx[kept].numpy(), sc[kept].numpy(), lb[kept].numpy()))
    return results
