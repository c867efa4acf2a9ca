"""Top-K ranking metrics and the two baselines a recommender is compared with.

Protocols (both are reported, labelled):
- `full`: the held-out item is ranked against every item the user has not interacted with in
  the history the model read (earlier items are never recommended again, for every method);
- `sampled`: it is ranked against `negatives` items drawn uniformly, per user, from the items
  the user never interacted with (the common 100-negatives protocol of SASRec and others; it
  overstates quality next to `full` and is reported for comparison with published figures).
Ties are broken by one seeded random order shared by all methods, so a method that scores
many items alike gets the expected rank of a random pick among them, not the best or worst.
Ranks are 0-based: HR@K = share of users with rank < K; NDCG@K = mean of 1 / log2(rank + 2)
over users with rank < K (one relevant item, so the ideal DCG is 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


def hr_ndcg(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """{'hr@K': ..., 'ndcg@K': ...} from 0-based ranks of the held-out item."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        gains = np.where(hit, 1.0 / np.log2(ranks + 2), 0.0)
        out[f"ndcg@{k}"] = float(gains.mean()) if len(ranks) else 0.0
    return out


def rank_of_target(scores: torch.Tensor, target_col: torch.Tensor, tiebreak: torch.Tensor):
    """0-based rank of scores[i, target_col[i]] in row i; -inf entries are never ahead."""
    t = scores.gather(1, target_col[:, None])
    tk = tiebreak.gather(1, target_col[:, None])
    ahead = (scores > t) | ((scores == t) & (tiebreak < tk))
    return ahead.sum(1)


def sample_negatives(
    sequences: Sequence[np.ndarray], n_items: int, n: int, seed: int
) -> np.ndarray:
    """(users, n) item ids in 1..n_items that each user never interacted with, uniform without
    replacement; -1 pads a row when the user has interacted with all but fewer than n items."""
    rng = np.random.default_rng(seed)
    out = np.full((len(sequences), n), -1, dtype=np.int64)
    for u, seq in enumerate(sequences):
        seen = set(seq.tolist())
        free = n_items - len(seen)
        if free <= 2 * n:  # few left: enumerate them
            pool = np.setdiff1d(np.arange(1, n_items + 1), seq)
            pick = rng.permutation(pool)[:n]
        else:
            picked: list[int] = []
            chosen: set[int] = set()
            while len(picked) < n:
                for c in rng.integers(1, n_items + 1, size=2 * n).tolist():
                    if c not in seen and c not in chosen:
                        chosen.add(c)
                        picked.append(c)
                        if len(picked) == n:
                            break
            pick = np.array(picked)
        out[u, : len(pick)] = pick
    return out


def evaluate_ranking(
    score_fn: Callable[[np.ndarray], torch.Tensor],
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    negatives: np.ndarray,
    n_items: int,
    ks: Sequence[int],
    seed: int,
    batch_size: int = 512,
) -> dict[str, dict[str, float]]:
    """{'full': {hr@K, ndcg@K}, 'sampled': {...}} for one method.

    score_fn(user indices) -> (batch, n_items + 1) float scores (column 0, padding, ignored)."""
    full_ranks, sampled_ranks = [], []
    gen = torch.Generator().manual_seed(seed)
    tiebreak_all = torch.rand(len(targets), n_items + 1, generator=gen)
    for start in range(0, len(targets), batch_size):
        users = np.arange(start, min(start + batch_size, len(targets)))
        scores = score_fn(users).float().cpu().clone()
        tiebreak = tiebreak_all[users]
        scores[:, 0] = -torch.inf
        for row, u in enumerate(users):
            scores[row, torch.from_numpy(histories[u])] = -torch.inf
        tgt = torch.from_numpy(targets[users])
        full_ranks.append(rank_of_target(scores, tgt, tiebreak))
        neg = torch.from_numpy(negatives[users])
        cand = torch.cat([tgt[:, None], neg.clamp(min=0)], 1)
        cand_scores = scores.gather(1, cand)
        cand_scores[:, 1:][neg < 0] = -torch.inf
        # the target's own score may be -inf only if it was in the history, which a
        # leave-one-out split of distinct items rules out
        zero = torch.zeros(len(users), dtype=torch.long)
        sampled_ranks.append(rank_of_target(cand_scores, zero, tiebreak.gather(1, cand)))
    return {
        "full": hr_ndcg(torch.cat(full_ranks).numpy(), ks),
        "sampled": hr_ndcg(torch.cat(sampled_ranks).numpy(), ks),
    }


# ---------------------------------------------------------------------------------------------
# Baselines


def popularity(histories: Sequence[np.ndarray], n_items: int) -> torch.Tensor:
    """Interaction counts per item id (index 0 unused) over the given histories."""
    flat = np.concatenate(histories) if len(histories) else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(np.bincount(flat, minlength=n_items + 1).astype(np.float32))


class ItemKNN:
    """Item-based collaborative filtering: cosine similarity of items' user sets (binary),
    each item keeping its `neighbors` most similar items; a user's score for item j is the sum
    of j's similarities to the items in the user's history."""

    def __init__(self, histories: Sequence[np.ndarray], n_items: int, neighbors: int = 100):
        from scipy import sparse

        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.concatenate(histories) if len(histories) else np.zeros(0, dtype=np.int64)
        x = sparse.csr_matrix(
            (np.ones(len(cols), dtype=np.float32), (rows, cols)),
            shape=(len(histories), n_items + 1),
        )
        x.data[:] = 1.0  # an item twice in a history still counts once
        co = (x.T @ x).tocsr().astype(np.float32)
        norms = np.sqrt(co.diagonal())
        norms[norms == 0] = 1.0
        co.setdiag(0)
        co.eliminate_zeros()
        sim = sparse.diags(1 / norms) @ co @ sparse.diags(1 / norms)
        self.sim = _top_per_row(sim.tocsr(), neighbors)
        self.n_items = n_items

    def scores(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        from scipy import sparse

        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.concatenate(histories) if len(histories) else np.zeros(0, dtype=np.int64)
        x = sparse.csr_matrix(
            (np.ones(len(cols), dtype=np.float32), (rows, cols)),
            shape=(len(histories), self.n_items + 1),
        )
        return torch.from_numpy(np.asarray((x @ self.sim).todense(), dtype=np.float32))


def _top_per_row(m, k: int):
    """Keep each row's k largest entries (row i = item i's neighbours; used as x @ m, so a
    history item i spreads its similarity to its k nearest items)."""
    from scipy import sparse

    rows, cols, vals = [], [], []
    for i in range(m.shape[0]):
        start, end = m.indptr[i], m.indptr[i + 1]
        if start == end:
            continue
        v, c = m.data[start:end], m.indices[start:end]
        keep = np.argsort(-v, kind="stable")[:k]
        rows.append(np.full(len(keep), i))
        cols.append(c[keep])
        vals.append(v[keep])
    if not rows:
        return sparse.csr_matrix(m.shape, dtype=np.float32)
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape
    )
