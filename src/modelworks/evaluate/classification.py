"""Classification metrics and the confusion-matrix plot, one copy for every classifying task
(text, image, and the ones to come)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    """Accuracy, macro-F1, per-class precision / recall / support and the confusion matrix
    (rows: true class, columns: predicted); a class never predicted or never present scores 0,
    as scikit-learn's zero_division=0."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    tp = np.diag(cm).astype(float)
    predicted, present = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros(n_classes), where=predicted > 0)
    recall = np.divide(tp, present, out=np.zeros(n_classes), where=present > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n_classes), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / max(1, len(y_true))),
        "macro_f1": float(f1.mean()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "support": present.tolist(),
        "confusion_matrix": cm.tolist(),
    }


def score_classifier(
    logits, y, train_y, classes: list[str], split: str, bootstrap: int, seed: int
) -> dict:
    """metrics.json's core for a classifier's logits (N, C) on labels y (N,): the split, rows,
    cross-entropy, classification_metrics with 95% bootstrap intervals (`bootstrap` resamples;
    0 = none), and the accuracy of always answering the training split's majority class."""
    import torch
    import torch.nn.functional as F

    from modelworks.evaluate.metrics import classification_cis

    pred = logits.argmax(1).numpy()
    m = classification_metrics(y.numpy(), pred, len(classes))
    if bootstrap:
        m.update(classification_cis(y.numpy(), pred, len(classes), n_boot=bootstrap, seed=seed))
        m["ci_level"] = 0.95
    majority = int(torch.bincount(train_y).argmax())
    return {
        "split": split,
        "rows": len(y),
        "examples": len(y),
        "loss": F.cross_entropy(logits, y).item(),
        **m,
        "majority_baseline_accuracy": float((y == majority).float().mean()),
        "classes": classes,
    }


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> None:
    """Counts per (true, predicted) class pair as a heat map, written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 6 else 0)
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if cm[i, j]:
                dark = cm[i, j] > cm.max() / 2
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")  # fmt: skip
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (counts)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def unknown_labels(labels: list[str], classes: list[str]) -> tuple[list[int], dict]:
    """(indices of rows whose label the run knows, {rows, labels: counts} of the others): new
    data scored by `evaluate --data`."""
    index = {c: i for i, c in enumerate(classes)}
    missing = Counter(label for label in labels if label not in index)
    keep = [i for i, label in enumerate(labels) if label in index]
    return keep, {"rows": sum(missing.values()), "labels": dict(missing.most_common())}


def none_left(unknown: dict, classes: list[str]) -> str:
    """The error when no row of new data has a label the run knows."""
    named = ", ".join(repr(k) for k in list(unknown["labels"])[:5])
    return (
        f"--data: none of its {unknown['rows']} row(s) has a label the run knows ({named} ...); "
        f"the run's labels are {classes}"
    )
