"""The click head's data and baselines: one (user, candidate item) pair per user and window.

A window's "clicks" are the items a user views in [cutoff, cutoff + horizon). Each user gets one
candidate: with probability 1/2, when they have clicks, one of them drawn at random; otherwise an
item drawn by popularity (the training log's counts). The label is whether the candidate is
among the user's clicks, so a popular negative the user did click is a positive, never noise.
Popularity-drawn negatives make popularity itself a weak ranker: what is left to learn is the
user's taste, which is what target attention (DIN) reads from the history.

Baselines on the same pairs: popularity (the candidate's count) and a logistic regression on ids
(one-hot user, fitted on the train window, and one-hot candidate item).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from modelworks.evaluate import propensity as prop


def candidates(con, users: list[str], start, end, counts: np.ndarray, seed: int):
    """(candidate item index (users,), label (users,)) for one window."""
    rows = con.execute(
        """WITH it AS (SELECT item, row_number() OVER (ORDER BY count(*) DESC, item) - 1 AS ii
                       FROM e WHERE item IS NOT NULL GROUP BY item)
        SELECT DISTINCT user, ii FROM e JOIN it USING (item)
        WHERE event = 'view' AND time >= $a AND time < $b""",
        {"a": start.item(), "b": end.item()},
    ).fetchall()
    index = {u: i for i, u in enumerate(users)}
    clicked: dict[int, list[int]] = {}
    for u, ii in rows:
        if u in index:
            clicked.setdefault(index[u], []).append(int(ii))
    rng = np.random.default_rng(seed)
    p = counts / counts.sum()
    cand = rng.choice(len(counts), len(users), p=p)
    coin = rng.random(len(users)) < 0.5
    for i, items in clicked.items():
        if coin[i]:
            cand[i] = items[rng.integers(len(items))]
    label = np.array([cand[i] in set(clicked.get(i, ())) for i in range(len(users))], np.float32)
    return cand.astype(np.int64), label


def logistic_on_ids(train_users, train_cand, train_y, test_users, test_cand, n_items: int):
    """P(click) from a logistic regression on one-hot (user, item); users unseen in training
    get only their item's weight."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    uindex = {u: i for i, u in enumerate(train_users)}

    def design(users, cand):
        rows = np.arange(len(users))
        u = np.array([uindex.get(x, -1) for x in users])
        known = u >= 0
        a = sparse.csr_matrix(
            (np.ones(known.sum()), (rows[known], u[known])), shape=(len(users), len(uindex))
        )
        b = sparse.csr_matrix((np.ones(len(users)), (rows, cand)), shape=(len(users), n_items))
        return sparse.hstack([a, b]).tocsr()

    model = LogisticRegression(max_iter=1000, C=1.0)
    model.fit(design(train_users, train_cand), train_y)
    return model.predict_proba(design(test_users, test_cand))[:, 1]


@torch.no_grad()
def click_scores(model, x, items, cand, device, batch: int = 512, extra=None):
    """(DIN probabilities, mean-pooling ablation probabilities) for (user, candidate) pairs."""
    din, plain = [], []
    for s, xb, h in model.hidden_batches(x, device, extra, batch):
        hist = (items[s : s + batch, : xb.shape[1]] + 1).to(device)
        state = model.last(h, xb)
        d, p, _ = model.click(state, hist, (cand[s : s + batch] + 1).to(device))
        din.append(torch.sigmoid(d).float().cpu())
        plain.append(torch.sigmoid(p).float().cpu())
    return torch.cat(din).numpy(), torch.cat(plain).numpy()


def click_results(run_dir: Path, model, tensors: dict, users: dict, device) -> dict:
    """AUC / log loss of the click heads and baselines on the test window's pairs."""
    counts = np.array(json.loads((run_dir / "preprocess" / "items.json").read_text())["counts"])
    y = tensors["test_click"].numpy().astype(np.float64)
    cand = tensors["test_cand"]
    x, items, ex = tensors["test_x"], tensors["test_items"], tensors.get("test_extra")
    din, plain = click_scores(model, x, items, cand, device, extra=ex)
    lr = logistic_on_ids(
        users["train"],
        tensors["train_cand"].numpy(),
        tensors["train_click"].numpy(),
        users["test"],
        cand.numpy(),
        len(counts),
    )
    pop = counts[cand.numpy()] / counts.max()
    scores = {
        "DIN (target attention)": din,
        "no attention (mean of past items)": plain,
        "popularity": pop,
        "logistic regression on ids": lr,
    }
    out = {n: prop.metrics(y, p) for n, p in scores.items()}
    return {"pairs": len(y), "positives": int(y.sum()), "methods": out}


def click_table(c: dict) -> str:
    head = "| method | AUC | log loss |\n|---|---|---|"
    rows = [f"| {n} | {r['auc']:.4f} | {r['log_loss']:.4f} |" for n, r in c["methods"].items()]
    return (
        f"{c['pairs']:,} pairs, {c['positives']:,} clicked (one candidate per user: a viewed "
        "item or a popularity-drawn one)\n\n" + "\n".join([head, *rows])
    )
