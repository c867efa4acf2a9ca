"""Object detection: boxes and classes from an image, with a CenterNet-style detector.

Data: COCO JSON, YOLO txt labels, or built-in digit scenes (collect/detection.py), preprocessed to
square uint8 images and boxes (tasks/object_detection_data.py). Model: `detector`
(models/detector.py), trained through the one Trainer with box-consistent augmentations
(tasks/detection_augment.py). Metrics: COCO mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP from
pycocotools (evaluate/detection.py), next to a sliding-window baseline in the same run
(tasks/object_detection_baseline.py). Serving: POST /v1/images/detect (serve/detection.py).

    modelworks run configs/detection.yaml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from modelworks.config import Config
from modelworks.evaluate.report import EvaluateError, md_table, training_table
from modelworks.models.detector import detection_loss
from modelworks.models.registry import build_model, fill_from_data, model_config_from
from modelworks.progress import Reporter
from modelworks.tasks.base import TRAIN, Task, TaskOptions, option
from modelworks.tasks.object_detection_data import DetectionLoader, load_split, normalise
from modelworks.tasks.object_detection_data import prepare as prepare_data
from modelworks.train.checkpoint import load_model
from modelworks.train.trainer import TrainSetup

if TYPE_CHECKING:
    from modelworks.evaluate.checkpoint import Checkpoint


class Options(TaskOptions):
    """`tasks.object_detection:`"""

    image_size: int = option(
        64, stage="preprocess", ge=8, description="images are resized to this height and width"
    )
    channels: Literal[1, 3] = option(1, stage="preprocess", description="1: grayscale, 3: RGB")
    augment_zoom: float = option(
        0.25, stage=TRAIN, ge=0, lt=1, description="random scale within 1 +/- this (boxes follow)"
    )
    augment_shift: float = option(
        0.15, stage=TRAIN, ge=0, le=0.5, description="random shift up to this share of the image"
    )
    augment_flip: bool = option(
        False, stage=TRAIN, description="random horizontal flips (off: mirrored digits)"
    )
    augment_jitter: float = option(
        0.2, stage=TRAIN, ge=0, le=1, description="random brightness and contrast within +/- this"
    )
    eval_images: int = option(
        200, stage=TRAIN, ge=1, description="validation images scored by COCO mAP at each check"
    )
    max_detections: int = option(
        100,
        stage=("evaluate", "serve"),
        ge=1,
        description="boxes per image at most (evaluate; serve default)",
    )
    score_threshold: float = option(
        0.3, stage="serve", ge=0, le=1, description="serve: default lowest score of a box returned"
    )
    baseline: bool = option(True, stage="evaluate",
                            description="also score the sliding-window baseline")  # fmt: skip


def _options(cfg: Config) -> Options:
    return TASK.options_from(cfg)


def prepare(cfg: Config, run_dir, out, reporter) -> dict:
    o = _options(cfg)
    return prepare_data(cfg, run_dir, out, reporter, o.image_size, o.channels)


def _truth(boxes: torch.Tensor, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i in range(n):
        rows = boxes[boxes[:, 0] == i]
        out.append((rows[:, 2:].numpy(), rows[:, 1].long().numpy()))
    return out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, meta: dict, device, max_detections: int = 100,
            score_threshold: float = 0.01, batch_size: int = 64) -> list[tuple]:  # fmt: skip
    """Per image (boxes, scores, labels) as numpy, from uint8 images (N, C, S, S)."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = normalise(x[i : i + batch_size], meta).to(device)
        for d in model.detect(xb, score_threshold, max_detections):
            out.append(tuple(d[k].cpu().numpy() for k in ("boxes", "scores", "labels")))
    return out


def setup_training(
    cfg: Config, run_dir: Path, device: torch.device, rank: int = 0, world: int = 1
) -> TrainSetup:
    from modelworks.evaluate.detection import coco_metrics
    from modelworks.tasks.detection_augment import BoxAugment

    x, boxes, meta = load_split(run_dir, "train")
    vx, vboxes, _ = load_split(run_dir, "val")
    opts = _options(cfg)
    n_classes = len(meta["classes"])
    model_cfg = model_config_from(cfg.model)
    fill_from_data(model_cfg, image_size=meta["image_size"], channels=meta["channels"],
                   n_classes=n_classes)  # fmt: skip
    model = build_model(model_cfg).to(device)
    p = cfg.pretrain
    augment = BoxAugment(opts.augment_zoom, opts.augment_shift, opts.augment_flip,
                         opts.augment_jitter, seed=cfg.seed)  # fmt: skip
    loader = DetectionLoader(x, boxes, meta, p.batch_size // world, cfg.seed, augment, rank, world)
    vx = vx[: opts.eval_images]
    vboxes = vboxes[vboxes[:, 0] < len(vx)]
    truth = _truth(vboxes, len(vx))

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        xb, targets = batch
        return detection_loss(m(xb.to(device)), targets, n_classes)

    def validate(m: nn.Module) -> dict[str, float]:
        if not len(vx):
            return {"val_loss": float("nan")}
        xb = normalise(vx, meta).to(device)
        loss = float(detection_loss(m(xb), vboxes, n_classes))
        scores = coco_metrics(truth, predict(m, vx, meta, device), meta["classes"])
        return {"val_loss": loss, "val_map": scores["map"], "val_map_50": scores["map_50"]}

    return TrainSetup(model, loss_fn, loader, validate, p.batch_size // world, "img")


def evaluate(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt: Checkpoint | None = None
):
    """COCO mAP of `ckpt` (default: the one evaluate/checkpoint.py chooses) and the baseline."""
    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.evaluate.detection import coco_metrics, plot_detections, plot_pr_curves
    from modelworks.runtime import resolve_device

    opts = _options(cfg)
    device = resolve_device(cfg.device)
    ckpt = ckpt or choose_checkpoint(cfg)
    model = load_model(ckpt.folder, device).eval()
    split = cfg.evaluate.split or "test"
    try:
        x, boxes, meta = load_split(run_dir, split)
    except KeyError:
        raise EvaluateError(f"evaluate.split={split!r}: the run has no such split") from None
    if not len(x):
        raise EvaluateError(f"{run_dir / 'preprocess'}: the {split!r} split is empty")
    classes = meta["classes"]
    truth = _truth(boxes, len(x))
    preds = predict(model, x, meta, device, opts.max_detections)
    m = coco_metrics(truth, preds, classes)
    metrics = {"split": split, "rows": len(x), "images": len(x), "boxes": len(boxes),
               **{k: v for k, v in m.items() if k != "pr_50"}, "classes": classes}  # fmt: skip
    curves = {"detector": m["pr_50"]}
    rows = [("mAP@[.5:.95]", m["map"]), ("mAP@.5", m["map_50"]), ("mAP@.75", m["map_75"])]
    if opts.baseline:
        from modelworks.tasks import object_detection_baseline as baseline

        tx, tboxes, _ = load_split(run_dir, "train")
        clf = baseline.fit(tx, tboxes, len(classes), cfg.seed)
        b = coco_metrics(truth, baseline.detect(clf, x, len(classes), opts.max_detections),
                         classes)  # fmt: skip
        metrics.update({f"baseline_{k}": v for k, v in b.items() if k != "pr_50"})
        curves["sliding-window baseline"] = b["pr_50"]
        base = {"mAP@[.5:.95]": b["map"], "mAP@.5": b["map_50"], "mAP@.75": b["map_75"]}
    reporter.info(
        f"[evaluate] {split}: mAP@[.5:.95] {m['map']:.4f}, mAP@.5 {m['map_50']:.4f} on "
        f"{len(x)} images"
        + (
            f" (sliding-window baseline {b['map']:.4f} / {b['map_50']:.4f})"
            if opts.baseline
            else ""
        )
    )
    header = "| metric | detector |" + (" sliding-window baseline |" if opts.baseline else "")
    lines = [header, "|---|---|" + ("---|" if opts.baseline else "")]
    for name, value in rows:
        lines.append(
            f"| {name} | {value:.4f} |" + (f" {base[name]:.4f} |" if opts.baseline else "")
        )
    per_class = "\n".join(
        ["| class | AP@[.5:.95] |" + (" baseline |" if opts.baseline else ""),
         "|---|---|" + ("---|" if opts.baseline else "")]
        + [f"| {c} | {m['ap_per_class'][c]:.3f} |"
           + (f" {metrics['baseline_ap_per_class'][c]:.3f} |" if opts.baseline else "")
           for c in classes]
    )  # fmt: skip
    plot_pr_curves(curves, out / "pr_curves.png")
    shown = [(b[s >= 0.3], s[s >= 0.3], c[s >= 0.3]) for b, s, c in preds]  # as served
    plot_detections(x.numpy(), truth, shown, classes, out / "detections.png")
    trained = json.loads((ckpt.stage_dir / "manifest.json").read_text())["summary"]
    summary = md_table([(f"{split} images", str(len(x))), (f"{split} boxes", str(len(boxes)))])
    sections = [
        (f"Results ({split} split, COCO evaluator)", summary + "\n\n" + "\n".join(lines)),
        ("Per class", per_class),
        ("Training", training_table(trained)),
    ]
    images = [
        ("detections.png", f"Held-out {split} images: true and predicted (score >= 0.3) boxes"),
        ("pr_curves.png", "Precision-recall at IoU 0.5"),
    ]
    return metrics, sections, images


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    """`modelworks serve` hook: POST /v1/images/detect (serve/detection.py), its defaults
    (score_threshold, max_detections) from the run's `tasks.object_detection` section."""
    from modelworks.serve.detection import add_routes

    manifest = Path(run_dir) / "pretrain" / "manifest.json"
    section = {}
    if manifest.is_file():
        section = json.loads(manifest.read_text()).get("config", {}).get("tasks", {})
        section = section.get("object_detection") or {}
    opts = Options.model_validate(section)
    defaults = {"score_threshold": opts.score_threshold, "max_detections": opts.max_detections}
    add_routes(app, run_dir, cfg, device, defaults)


TASK = Task(
    name="object_detection",
    prepare=prepare,
    setup_training=setup_training,
    evaluate=evaluate,
    serve_routes=serve_routes,
    options=Options,
)
