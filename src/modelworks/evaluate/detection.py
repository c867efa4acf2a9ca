"""Object-detection metrics with the real COCO evaluator (pycocotools' COCOeval, called directly):
mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP, the precision-recall curves at IoU 0.5, and the
report pictures (images with true and predicted boxes, PR curves).

Boxes in and out are [x1, y1, x2, y2] pixels; COCO's [x, y, w, h] lives only inside here.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np


def coco_metrics(
    truth: list[tuple[np.ndarray, np.ndarray]],
    preds: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    classes: list[str],
) -> dict:
    """`truth`: per image (boxes (N, 4), labels (N,)); `preds`: per image (boxes, scores,
    labels). Returns map (mAP@[.5:.95]), map_50, map_75, ap_per_class, and pr_50: the
    precision at 101 recall points at IoU 0.5 per class (for the curves)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # an optional extra
        raise ImportError("object detection metrics need pycocotools: pip install "
                          "'modelworks[detection]'") from e  # fmt: skip
    if len(truth) != len(preds):
        raise ValueError(f"{len(truth)} images of truth but {len(preds)} of predictions")

    def xywh(b) -> list[float]:
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    anns = []
    for i, (boxes, labels) in enumerate(truth):
        for b, c in zip(boxes, labels, strict=True):
            area = float((b[2] - b[0]) * (b[3] - b[1]))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c),
                         "bbox": xywh(b), "area": area, "iscrowd": 0})  # fmt: skip
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in range(len(truth))],
        "annotations": anns,
        "categories": [{"id": k, "name": n} for k, n in enumerate(classes)],
    }
    dets = [
        {"image_id": i, "category_id": int(c), "bbox": xywh(b), "score": float(s)}
        for i, (boxes, scores, labels) in enumerate(preds)
        for b, s, c in zip(boxes, scores, labels, strict=True)
    ]
    empty = {"map": 0.0, "map_50": 0.0, "map_75": 0.0,
             "ap_per_class": dict.fromkeys(classes, 0.0),
             "pr_50": {c: [0.0] * 101 for c in classes}}  # fmt: skip
    if not dets or not anns:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints its progress
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (IoU thresholds, recall points, classes, areas, maxDets)
    per_class = {}
    for k, name in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    return {
        "map": float(ev.stats[0]),
        "map_50": float(ev.stats[1]),
        "map_75": float(ev.stats[2]),
        "ap_per_class": per_class,
        "pr_50": {
            n: np.clip(precision[0, :, k, 0, -1], 0, 1).tolist() for k, n in enumerate(classes)
        },  # fmt: skip
    }


def plot_pr_curves(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Precision-recall at IoU 0.5, averaged over classes, one line per detector."""
    import matplotlib.pyplot as plt

    recall = np.linspace(0, 1, 101)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for name, per_class in curves.items():
        mean = np.mean([v for v in per_class.values()], axis=0)
        axes[0].plot(recall, mean, label=name)
    first = next(iter(curves.values()))
    for cls, values in first.items():
        axes[1].plot(recall, values, label=cls, linewidth=1)
    axes[0].set_title("PR at IoU 0.5, mean over classes")
    axes[1].set_title(f"PR at IoU 0.5 per class ({next(iter(curves))})")
    for ax in axes:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_detections(images, truth, preds, classes: list[str], path: Path, limit: int = 8) -> None:
    """Up to `limit` images (uint8 (N, C, H, W)) with true boxes (green) and predicted boxes
    (red, with label and score)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = min(limit, len(images))
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), dpi=100)
    axes = np.atleast_1d(axes).reshape(-1)
    for ax in axes:
        ax.axis("off")
    for ax, img, (tb, _), (pb, ps, pl) in zip(axes, images[:n], truth, preds, strict=False):
        img = np.asarray(img)
        ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray")
        for b in tb:
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1],
                                   fill=False, edgecolor="lime", linewidth=1.5))  # fmt: skip
        for b, s, c in zip(pb, ps, pl, strict=True):
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1],
                                   fill=False, edgecolor="red", linewidth=1))  # fmt: skip
            ax.text(b[0], b[1] - 1, f"{classes[int(c)]} {s:.2f}", color="red", fontsize=7)
    fig.suptitle("Held-out images: true boxes (green), predicted (red, label and score)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
