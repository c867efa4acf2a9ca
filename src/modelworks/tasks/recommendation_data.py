"""Recommendation data: interactions from collect to per-user item sequences in time order
(rare users and items dropped, counted), the item vocabulary, and the leave-one-out split
(tasks/recommendation.py has the rest of the task)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from modelworks.artifacts import atomic_write_text
from modelworks.config import Config
from modelworks.errors import RecommendationDataError
from modelworks.progress import Reporter

# ---------------------------------------------------------------------------------------------
# Preprocess


def prepare(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, min_user: int, min_item: int
) -> dict:
    """Sequences with the k-core: users keep >= min_user items, items >= min_item users."""
    import pandas as pd

    path = run_dir / "collect" / "interactions.parquet"
    if not path.is_file():
        raise RecommendationDataError(
            f"{path} does not exist: task recommendation needs an interactions source "
            "(collect.sources type: interactions, stdlib_calls or stdlib_imports)"
        )
    df = pd.read_parquet(path, columns=["user", "item", "timestamp"])
    sequences, items, users, stats = build_sequences(
        df,
        min_user,
        min_item,
        where=str(path),
    )
    flat = np.concatenate(sequences)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])])
    save_file(
        {"items": torch.from_numpy(flat), "offsets": torch.from_numpy(offsets)},
        str(out / "sequences.safetensors"),
    )
    counts = np.bincount(flat, minlength=len(items) + 1)[1:].tolist()
    atomic_write_text(out / "items.json", json.dumps({"items": items, "counts": counts}))
    atomic_write_text(out / "users.json", json.dumps(users))
    reporter.info(
        f"[preprocess] {stats['users']} users, {stats['items']} items, "
        f"{stats['interactions']} interactions kept of {stats['interactions_raw']}; dropped "
        f"{stats['users_one_interaction']} users with one interaction, "
        f"{stats['users_below_k_core']} more users and {stats['items_below_k_core']} items by "
        f"the k-core, {stats['duplicates']} repeated (user, item) pairs"
    )
    return stats


def build_sequences(df, min_user: int, min_item: int, where: str = "interactions"):
    """(per-user item-id arrays in time order, item names by id - 1, user names, stats)."""
    raw = len(df)
    df = df.assign(_row=np.arange(raw)).sort_values(["user", "timestamp", "_row"], kind="stable")
    deduped = df.drop_duplicates(["user", "item"], keep="first")
    per_user = deduped.groupby("user")["item"].transform("size")
    one = int((per_user == 1).groupby(deduped["user"]).first().sum())
    kept = deduped[per_user > 1]
    users_before, items_before = kept["user"].nunique(), kept["item"].nunique()
    rounds = 0
    while True:
        rounds += 1
        item_n = kept.groupby("item")["user"].transform("size")
        kept = kept[item_n >= min_item]
        user_n = kept.groupby("user")["item"].transform("size")
        kept = kept[user_n >= min_user]
        if len(kept) == 0 or (
            kept.groupby("item")["user"].size().min() >= min_item
            and kept.groupby("user")["item"].size().min() >= min_user
        ):
            break
    if len(kept) == 0:
        raise RecommendationDataError(
            f"{where}: no user has {min_user}+ items among items with {min_item}+ users; "
            "lower tasks.recommendation.min_user_interactions / min_item_interactions or add data"
        )
    counts = kept["item"].value_counts()
    # id 1 = the most frequent item; ties by name, so ids do not depend on row order
    order = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    items = [str(name) for name, _ in order]
    index = {name: i + 1 for i, name in enumerate(items)}
    users, sequences = [], []
    for user, group in kept.groupby("user", sort=True):
        users.append(str(user))
        sequences.append(np.array([index[str(i)] for i in group["item"]], dtype=np.int64))
    lengths = np.array([len(s) for s in sequences])
    stats = {
        "interactions_raw": raw,
        "duplicates": raw - len(deduped),
        "users_one_interaction": one,
        "users_below_k_core": int(users_before - len(users)),
        "items_below_k_core": int(items_before - len(items)),
        "k_core_rounds": rounds,
        "users": len(users),
        "items": len(items),
        "interactions": int(lengths.sum()),
        "mean_history": round(float(lengths.mean()), 2),
        "split": "leave-one-out: per user, last item test, second to last validation",
        "train_interactions": int((lengths - 2).sum()),
    }
    return sequences, items, users, stats


def load_sequences(run_dir: Path) -> tuple[list[np.ndarray], list[str]]:
    pre = run_dir / "preprocess"
    data = load_file(str(pre / "sequences.safetensors"))
    flat, offsets = data["items"].numpy(), data["offsets"].numpy()
    seqs = [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    return seqs, json.loads((pre / "items.json").read_text())["items"]


def split(sequences: list[np.ndarray], which: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(histories, targets) of the leave-one-out split: 'val' reads all but the last two items
    and predicts the second to last; 'test' reads all but the last and predicts the last."""
    cut = {"val": 2, "test": 1}[which]
    return [s[:-cut] for s in sequences], np.array([s[-cut] for s in sequences])
