"""Image classification: cross-entropy on logits over the preprocessed uint8 images.

Data: `data.safetensors` + `labels.json` from preprocess/images.py, normalised with the training
split's mean/std. Training batches can be augmented on the fly (tasks/augment.py: random crop,
flip, rotation; `tasks.image_classification.augment_*`); validation and test images never
are. Metrics: accuracy, macro-F1, per-class precision/recall, a confusion matrix, next to a
majority-class baseline on the same split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from modelworks.config import Config, ConfigError
from modelworks.evaluate.classification import (  # noqa: F401  (public here too)
    classification_metrics,
    none_left,
    plot_confusion,
    score_classifier,
    unknown_labels,
)
from modelworks.evaluate.metrics import fmt_ci
from modelworks.evaluate.report import EvaluateError, md_table, training_table
from modelworks.models.registry import build_model, fill_from_data, model_config_from
from modelworks.preprocess.images import prepare_images
from modelworks.progress import Reporter
from modelworks.tasks.augment import AugmentedLoader, make_augment
from modelworks.tasks.base import TRAIN, Task, TaskOptions, TestData, option
from modelworks.train.checkpoint import load_model
from modelworks.train.data import ExampleLoader
from modelworks.train.trainer import TrainSetup

if TYPE_CHECKING:
    from modelworks.evaluate.checkpoint import Checkpoint


class Options(TaskOptions):
    """`tasks.image_classification:`"""

    image_size: int = option(
        28, stage="preprocess", ge=1, description="images are resized to this height and width"
    )
    channels: Literal[1, 3] = option(1, stage="preprocess", description="1: grayscale, 3: RGB")
    augment_crop_padding: int = option(
        0,
        stage=TRAIN,
        ge=0,
        description="training images: pad by this many pixels, then crop back at random; 0 = off",
    )
    augment_flip: bool = option(False, stage=TRAIN, description="random horizontal flips")
    augment_rotate_degrees: float = option(
        0.0, stage=TRAIN, ge=0, le=180, description="random rotation within +/- this many degrees"
    )


def prepare(cfg: Config, run_dir: Path, out: Path, reporter: Reporter) -> dict:
    o = TASK.options_from(cfg)
    return prepare_images(cfg, run_dir, out, reporter, o.image_size, o.channels)


def load_split(run_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Normalised float images (N, C, H, W), labels (N,), and labels.json."""
    pre = run_dir / "preprocess"
    meta = json.loads((pre / "labels.json").read_text())
    data = load_file(str(pre / "data.safetensors"))
    x = (data[f"{split}_x"].float() / 255 - meta["mean"]) / meta["std"]
    return x, data[f"{split}_y"], meta


def _split_or_error(run_dir: Path, split: str):
    names = load_file(str(run_dir / "preprocess" / "data.safetensors")).keys()
    if f"{split}_x" not in names:
        have = sorted(k[:-2] for k in names if k.endswith("_x"))
        raise EvaluateError(f"evaluate.split={split!r}: the run has no such split; has {have}")
    return load_split(run_dir, split)


def ce_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x).float(), y)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device, batch_size: int = 512) -> torch.Tensor:
    """Logits for every row of x, in float32 on the CPU."""
    outs = [
        model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs) if outs else torch.zeros(0)


def setup_training(
    cfg: Config, run_dir: Path, device: torch.device, rank: int = 0, world: int = 1
) -> TrainSetup:
    x, _, meta = load_split(run_dir, "train")
    model_cfg = model_config_from(cfg.model)
    fill_from_data(
        model_cfg,
        in_features=x[0].numel(),
        n_classes=len(meta["classes"]),
        image_size=meta["image_size"],
        channels=meta["channels"],
    )
    return _setup(
        cfg, run_dir, device, build_model(model_cfg).to(device), cfg.pretrain, rank, world
    )


HEADS = {"vit": "head.", "cnn": "head.", "mlp": "net."}  # mlp: only its last Linear is the head


def setup_finetune(cfg: Config, run_dir: Path, device: torch.device, base) -> tuple:
    """From a trained image classifier (vit, cnn, mlp): the same network, with a new output
    layer when this data's label set differs (pretrain on one label set, fine-tune on another);
    every other weight carries over. The images must have the base's size and channels."""
    from dataclasses import fields, replace

    from modelworks.models.registry import name_of

    name = name_of(getattr(base.model, "modelworks_config", None) or base.model.cfg)
    if name not in HEADS:
        raise ConfigError(
            f"finetune.from={cfg.finetune.from_!r} is a {type(base.model).__name__}; "
            "image_classification fine-tunes a vit, cnn or mlp run"
        )
    x, _, meta = load_split(run_dir, "train")
    arch = base.model.cfg
    for key, value in (("image_size", meta["image_size"]), ("channels", meta["channels"]),
                       ("in_features", x[0].numel())):  # fmt: skip
        have = getattr(arch, key, value) if key in {f.name for f in fields(arch)} else value
        if have != value:
            raise ConfigError(
                f"finetune.from={cfg.finetune.from_!r} takes {key}={have}, the data has {value}; "
                f"set tasks.image_classification."
                f"{'channels' if key == 'channels' else 'image_size'} to match"
            )
    n_classes = len(meta["classes"])
    model = build_model(replace(arch, n_classes=n_classes))
    state = base.model.state_dict()
    if arch.n_classes != n_classes:  # a new label set: a new output layer
        last = [k for k in state if k.startswith(HEADS[name])][-2:]  # its weight and bias
        state = {k: v for k, v in state.items() if k not in last}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(HEADS[name]) for k in missing):
        raise ConfigError(f"finetune.from={cfg.finetune.from_!r}: weights do not fit {arch}")
    info = {"new_head": arch.n_classes != n_classes, "base_classes": arch.n_classes}
    return _setup(cfg, run_dir, device, model.to(device), cfg.finetune, 0, 1), info


def _setup(cfg, run_dir, device, model, p, rank: int, world: int) -> TrainSetup:
    x, y, _ = load_split(run_dir, "train")
    vx, vy, _ = load_split(run_dir, "val")
    loader = ExampleLoader(x, y, p.batch_size // world, cfg.seed, rank, world)
    o = TASK.options_from(cfg)
    augment = make_augment(
        crop_padding=o.augment_crop_padding,
        flip=o.augment_flip,
        rotate_degrees=o.augment_rotate_degrees,
        seed=cfg.seed,
    )
    if augment is not None:
        loader = AugmentedLoader(loader, augment, rank)

    def validate(m: nn.Module) -> dict[str, float]:
        logits = predict(m, vx, device)
        return {
            "val_loss": F.cross_entropy(logits, vy).item(),
            "val_accuracy": (logits.argmax(1) == vy).float().mean().item(),
        }

    return TrainSetup(model, ce_loss, loader, validate, p.batch_size // world, "ex", None)


def evaluate(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt: Checkpoint | None = None
):
    """Scores `ckpt` (evaluate/checkpoint.py; default: the one it chooses)."""
    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.runtime import resolve_device

    device = resolve_device(cfg.device)
    ckpt = ckpt or choose_checkpoint(cfg)
    model = load_model(ckpt.folder, device).eval()

    split = cfg.evaluate.split or "test"
    x, y, meta = _split_or_error(run_dir, split)
    if len(y) == 0 and cfg.evaluate.split is None:
        split = "val"
        x, y, meta = _split_or_error(run_dir, split)
    if len(y) == 0:
        raise EvaluateError(f"{run_dir / 'preprocess'}: the {split!r} split is empty")
    classes = meta["classes"]
    logits = predict(model, x, device)
    pred = logits.argmax(1).numpy()
    _, train_y, _ = load_split(run_dir, "train")
    metrics = score_classifier(logits, y, train_y, classes, split, cfg.evaluate.bootstrap, cfg.seed)
    m = metrics
    reporter.info(
        f"[evaluate] {split} accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} on "
        f"{len(y)} images (majority-class baseline {metrics['majority_baseline_accuracy']:.4f})"
    )
    plot_confusion(np.array(m["confusion_matrix"]), classes, out / "confusion.png")
    trained = json.loads((ckpt.stage_dir / "manifest.json").read_text())["summary"]
    results = md_table(
        [
            (f"{split} images", str(len(y))),
            ("accuracy [95% CI]", fmt_ci(m["accuracy"], m.get("accuracy_ci"))),
            ("macro-F1 [95% CI]", fmt_ci(m["macro_f1"], m.get("macro_f1_ci"))),
            ("majority-class baseline accuracy", f"{metrics['majority_baseline_accuracy']:.4f}"),
        ]
    )
    per_class = "\n".join(
        ["| class | precision | recall |", "|---|---|---|"]
        + [
            f"| {c} | {p:.3f} | {r:.3f} |"
            for c, p, r in zip(classes, m["precision"], m["recall"], strict=True)
        ]
    )
    errors_table, wrong = per_class_errors(np.array(m["confusion_matrix"]), classes)
    metrics["per_class_errors"] = wrong
    sections = [
        (f"Results ({split} split)", results),
        ("Per class", per_class),
        ("Per-class errors", errors_table),
        ("Training", training_table(trained)),
    ]
    images = [("confusion.png", "Confusion matrix")]
    if wrong["total"]:
        raw = load_file(str(run_dir / "preprocess" / "data.safetensors"))[f"{split}_x"]
        shown = plot_misclassified(raw, y.numpy(), pred, classes, out / "misclassified.png")
        images.append(("misclassified.png", f"Misclassified {split} images ({shown} shown)"))
    if hasattr(model, "patch_embed"):  # a ViT: where the class token looks, on a few test images
        from modelworks.evaluate.explain import plot_vit_attention

        raw = load_file(str(run_dir / "preprocess" / "data.safetensors"))[f"{split}_x"][:6]
        titles = [
            f"true {classes[int(t)]}, pred {classes[int(p)]}"
            for t, p in zip(y[:6], pred[:6], strict=True)
        ]
        plot_vit_attention(model, x[:6].to(device), raw, titles, out / "vit_attention.png")
        images.append(("vit_attention.png", "Interpretability: ViT attention"))
    return metrics, sections, images


def per_class_errors(cm: np.ndarray, classes: list[str]) -> tuple[str, dict]:
    """Markdown table of errors per true class (and what they were mistaken for) + a summary."""
    rows = [
        "| class | images | errors | error rate | most often predicted as |",
        "|---|---|---|---|---|",
    ]
    per_class = {}
    for i, c in enumerate(classes):
        n, err = int(cm[i].sum()), int(cm[i].sum() - cm[i, i])
        off = cm[i].copy()
        off[i] = 0
        confused = f"{classes[int(off.argmax())]} ({int(off.max())})" if err else "-"
        rate = f"{err / n:.3f}" if n else "-"
        rows.append(f"| {c} | {n} | {err} | {rate} | {confused} |")
        per_class[c] = err
    total = int(cm.sum() - np.trace(cm))
    return "\n".join(rows), {"total": total, "per_class": per_class}


def plot_misclassified(
    raw, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: Path, limit: int = 16
) -> int:
    """A grid of up to `limit` misclassified images (uint8, N x C x H x W), "true → predicted"."""
    import matplotlib.pyplot as plt

    wrong = np.flatnonzero(y_true != y_pred)[:limit]
    cols = min(4, len(wrong))
    rows = -(-len(wrong) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows + 0.4), dpi=100)
    axes = np.atleast_1d(axes).reshape(-1)
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, wrong, strict=False):
        img = raw[int(i)].numpy()
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img.transpose(1, 2, 0))
        ax.set_title(f"{classes[int(y_true[i])]} → {classes[int(y_pred[i])]}", fontsize=9)
    fig.suptitle("Misclassified images (true → predicted)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return len(wrong)


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    """`modelworks serve` hook: POST /v1/images/classify (serve/images.py)."""
    from modelworks.serve.images import add_routes

    add_routes(app, run_dir, cfg, device)


def prepare_test(run: Config, run_dir: Path, shadow: Path, pre: Path) -> dict:
    """`evaluate --data`: the new images at the run's size, labels the run knows."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import load_file, save_file

    from modelworks.preprocess.images import decode

    meta = json.loads((run_dir / "preprocess" / "labels.json").read_text())
    rows = pq.read_table(shadow / "collect" / "images.parquet").to_pylist()
    size, channels = meta["image_size"], meta["channels"]
    xs, labels, bad = [], [], 0
    for row in rows:
        try:
            xs.append(decode(row["image"], size, channels))
            labels.append(row["label"])
        except Exception:  # Pillow raises many types for corrupt input; counted as in preprocess
            bad += 1
    keep, unknown = unknown_labels(labels, meta["classes"])
    index = {c: i for i, c in enumerate(meta["classes"])}
    data = load_file(str(run_dir / "preprocess" / "data.safetensors"))
    shape = (0, channels, size, size)
    x = np.stack([xs[i] for i in keep]) if keep else np.zeros(shape, np.uint8)
    data["test_x"] = torch.from_numpy(x)
    data["test_y"] = torch.tensor([index[labels[i]] for i in keep], dtype=torch.int64)
    (pre / "data.safetensors").unlink()
    save_file(data, str(pre / "data.safetensors"))
    if not keep:
        raise EvaluateError(none_left(unknown, meta["classes"]))
    return {**unknown, "unreadable": bad}


TASK = Task(
    name="image_classification",
    prepare=prepare,
    setup_training=setup_training,
    evaluate=evaluate,
    setup_finetune=setup_finetune,
    serve_routes=serve_routes,
    options=Options,
    test_data=TestData(
        "images", "an image source (idx, image_folder, image_table, npz)", prepare_test
    ),
)
