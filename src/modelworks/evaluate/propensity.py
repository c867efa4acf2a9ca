"""Propensity scoring: metrics (AUC, log loss, expected calibration error, top-decile lift), a
reliability plot, and the two baselines (an RFM logistic regression; BG/NBD).

BG/NBD (Fader, Hardie & Lee 2005) comes from the `lifetimes` library (BetaGeoFitter) when it
imports; otherwise the baseline is reported as unavailable, never silently replaced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BINS = 10


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    order = np.argsort(-p, kind="stable")
    top = order[: max(1, len(p) // 10)]
    base = y.mean()
    return {
        "auc": float(roc_auc_score(y, p)) if 0 < base < 1 else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": ece(y, p),
        "lift_top_decile": float(y[top].mean() / base) if base > 0 else float("nan"),
    }


def ece(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over equal-width bins: sum |mean p - mean y| x share."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += abs(p[m].mean() - y[m].mean()) * m.mean()
    return float(total)


def reliability_plot(y: np.ndarray, scores: dict[str, np.ndarray], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modelworks.evaluate.report import save_png

    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for name, p in scores.items():
        idx = np.minimum((p * BINS).astype(int), BINS - 1)
        xs = [p[idx == b].mean() for b in range(BINS) if (idx == b).sum() >= 20]
        ys = [y[idx == b].mean() for b in range(BINS) if (idx == b).sum() >= 20]
        ax.plot(xs, ys, "o-", ms=3, label=name)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed share")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out)


def rfm_logistic(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Logistic regression on log1p(RFM features), standardised; fitted on the train window."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(np.log1p(np.maximum(train_x, 0)), train_y)
    return model.predict_proba(np.log1p(np.maximum(test_x, 0)))[:, 1]


def bgnbd(frequency, recency, age, horizon: float) -> tuple[np.ndarray | None, str]:
    """P(at least one transaction in the next `horizon` days) under BG/NBD fitted on the
    calibration history: (probabilities, which implementation) or (None, why not)."""
    try:
        from lifetimes import BetaGeoFitter
    except ImportError as e:
        return None, f"unavailable: lifetimes does not import ({e})"
    from lifetimes.utils import ConvergenceError

    bg = BetaGeoFitter(penalizer_coef=0.001)
    try:
        bg.fit(frequency, recency, age)
    except ConvergenceError:  # e.g. a log with almost no repeat purchases: a row, not a crash
        return None, "not fitted: lifetimes' BetaGeoFitter did not converge on this history"
    # dropout happens only at a purchase, so P(none in (T, T+t] | alive) = E[e^(-lambda t)] with
    # lambda's posterior Gamma(r + x, alpha + T): ((alpha + T) / (alpha + T + t))^(r + x)
    r, alpha = bg.params_["r"], bg.params_["alpha"]
    alive = np.asarray(bg.conditional_probability_alive(frequency, recency, age), np.float64)
    none = ((alpha + age) / (alpha + age + horizon)) ** (r + frequency)
    return alive * (1 - none), "lifetimes 0.11 BetaGeoFitter fit, P(alive) x P(>=1 | alive)"
