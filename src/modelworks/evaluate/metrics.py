"""Language-model metrics: cross-entropy, perplexity, and a unigram baseline on the same tokens."""

from __future__ import annotations

import math

import numpy as np


def unigram_cross_entropy(train_tokens: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    """Mean cross-entropy (nats) on `targets` of add-one-smoothed unigram frequencies from train.

    The floor any language model must beat: it knows which tokens are common, nothing of context.
    """
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[targets].mean())


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp overflows past ~709


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Tokenizer-independent: nats summed over every predicted token / UTF-8 bytes they spell."""
    return total_nats / max(total_bytes, 1) / math.log(2)


def bootstrap(
    stat, n_items: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat(indices)` over `n_items` resampled with replacement.

    `stat` takes an index array (into whatever per-item arrays the caller holds) and returns a
    float; resampling whole items (documents, examples) keeps their internal correlation.
    """
    if n_items < 2 or n_boot < 1:
        v = stat(np.arange(n_items))
        return float(v), float(v)
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n_items, n_items)) for _ in range(n_boot)])
    lo, hi = np.nanquantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def ratio_ci(nums: np.ndarray, dens: np.ndarray, **kw) -> tuple[float, float]:
    """CI of sum(nums)/sum(dens) by resampling items, e.g. loss per token over documents."""
    nums, dens = np.asarray(nums, float), np.asarray(dens, float)
    return bootstrap(lambda i: nums[i].sum() / max(dens[i].sum(), 1e-12), len(nums), **kw)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)  # 2*tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(n_classes), where=denom > 0)
    return float(f1.mean())


def classification_cis(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, **kw
) -> dict[str, list[float]]:
    """95% bootstrap intervals (resampling examples) of accuracy and macro-F1."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    correct = (y_true == y_pred).astype(float)
    return {
        "accuracy_ci": list(bootstrap(lambda i: correct[i].mean(), len(correct), **kw)),
        "macro_f1_ci": list(
            bootstrap(lambda i: macro_f1(y_true[i], y_pred[i], n_classes), len(correct), **kw)
        ),
    }


def fmt_ci(value: float, ci: list[float] | tuple[float, float] | None, digits: int = 4) -> str:
    """`0.8123 [0.79, 0.83]` for report tables."""
    if ci is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
