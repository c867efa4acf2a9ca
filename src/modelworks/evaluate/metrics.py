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
