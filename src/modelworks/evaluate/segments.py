"""User segments: k-means on user embeddings (k given, or chosen by silhouette), RFM quantile
segments as the baseline, and the scores that compare them (silhouette; adjusted Rand index
against known segments when there are any). Small cells are hidden (`min_group`)."""

from __future__ import annotations

import numpy as np

SAMPLE = 4000  # silhouette on a seeded sample: O(n^2) distances


def standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, std = x.mean(0), x.std(0) + 1e-6
    return (x - mean) / std, mean, std


def kmeans(x: np.ndarray, k: int, seed: int, k_max: int = 8) -> tuple[np.ndarray, np.ndarray, dict]:
    """(labels, centroids, {k: silhouette} tried); k = 0 picks the best silhouette in 2..k_max."""
    from sklearn.cluster import KMeans

    tried = {}
    if k == 0:
        for kk in range(2, k_max + 1):
            labels = KMeans(kk, n_init=4, random_state=seed).fit_predict(x)
            tried[kk] = silhouette(x, labels, seed)
        k = max(tried, key=tried.get)
    km = KMeans(k, n_init=10, random_state=seed).fit(x)
    return km.labels_, km.cluster_centers_, tried


def silhouette(x: np.ndarray, labels: np.ndarray, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    if len(set(labels.tolist())) < 2:
        return float("nan")
    n = min(SAMPLE, len(x))
    return float(silhouette_score(x, labels, sample_size=n, random_state=seed))


def ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def quantile_segments(rfm: np.ndarray, q: int = 3) -> np.ndarray:
    """RFM quantile segments: recency, frequency and monetary each cut in `q` rank groups
    (ties by order), one segment per (r, f, m): q^3 segments at most."""

    def ntile(v: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(v, kind="stable"), kind="stable") * q // len(v)

    r, f, m = ntile(-rfm[:, 0]), ntile(rfm[:, 1]), ntile(rfm[:, 2])
    return (r * q + f) * q + m


def hide_small(n: int, min_group: int) -> str:
    return str(n) if n >= min_group else f"< {min_group}"
