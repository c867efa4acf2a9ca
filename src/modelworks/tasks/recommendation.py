"""Sequential recommendation: predict a user's next item from the items before it (SASRec).

    modelworks run configs/recsys.yaml        # built-in data: the stdlib's functions and calls
    modelworks serve runs/recsys              # POST /v1/recommend

Preprocess (`prepare`): reads `<run>/collect/interactions.parquet`, orders each user's items by
time (ties: by row), keeps each (user, item) pair's first interaction, drops users with a single
interaction (counted), then k-core filters (users with >= tasks.recommendation.min_user_interactions
items, items with >= min_item_interactions users, repeated until both hold). Item ids are
1..N in order of decreasing count (0 is padding); the mapping goes to `items.json`, which
training copies next to the model. Split, chronological leave-one-out per user: the last item
is the test target, the second to last the validation target, the rest trains.

Training: every position of a training history predicts the next item, with a softmax over the
true item and `tasks.recommendation.negatives` uniformly sampled items (0: all items), or
SASRec's binary cross-entropy against one sampled negative. Validation: full-ranking NDCG@10 /
HR@10 on the validation targets (`val_ndcg@10` picks the best checkpoint) and a full-softmax
`val_loss`.

Evaluate: HR@K and NDCG@K on the test targets, full ranking and 100 sampled negatives, for SASRec
and, in the same run, a popularity baseline and item-kNN (evaluate/ranking.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelworks.artifacts import atomic_write_text
from modelworks.config import Config
from modelworks.evaluate import ranking
from modelworks.evaluate.report import md_table, training_table
from modelworks.models.registry import build_model, model_config_from
from modelworks.progress import Reporter
from modelworks.tasks.base import TRAIN, Task, TaskOptions, option
from modelworks.tasks.recommendation_data import (  # noqa: F401  (build_sequences: public here too)
    build_sequences,
    load_sequences,
    split,
)
from modelworks.tasks.recommendation_data import prepare as prepare_data
from modelworks.tasks.recommendation_serve import (  # noqa: F401  (public here too)
    Recommender,
    load_recommender,
    model_dir,
    recommend,
    serve_routes,
)
from modelworks.train.data import ExampleLoader
from modelworks.train.trainer import TrainSetup


class Options(TaskOptions):
    """`tasks.recommendation:`"""

    min_user_interactions: int = option(
        3, stage="preprocess", ge=3, description="k-core: users keep at least this many items"
    )
    min_item_interactions: int = option(
        5, stage="preprocess", ge=1, description="k-core: items keep at least this many users"
    )
    loss: Literal["sampled_softmax", "bce"] = option(
        "sampled_softmax",
        stage=TRAIN,
        description="softmax over the next item and `negatives` sampled items, or binary "
        "cross-entropy against one sampled negative per position (SASRec's)",
    )
    negatives: int = option(
        256, stage=TRAIN, ge=0, description="sampled_softmax negatives; 0 = all items"
    )
    ks: list[int] = option(
        None,
        default_factory=lambda: [5, 10, 20],
        stage="evaluate",
        description="cutoffs for HR/NDCG@K",
    )
    sampled_negatives: int = option(
        100, stage="evaluate", ge=1, description="negatives per user in the sampled protocol"
    )


def prepare(cfg: Config, run_dir: Path, out: Path, reporter: Reporter) -> dict:
    o = TASK.options_from(cfg)
    return prepare_data(
        cfg, run_dir, out, reporter, o.min_user_interactions, o.min_item_interactions
    )


if TYPE_CHECKING:
    from modelworks.evaluate.checkpoint import Checkpoint


# ---------------------------------------------------------------------------------------------
# Training


def training_windows(histories: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, ...]:
    """(inputs, targets), right-padded with 0 to max_len: each history's last max_len + 1
    items, then the max_len + 1 before those, and so on (windows overlap by one item)."""
    xs, ys = [], []
    for h in histories:
        end = len(h)
        while end >= 2:
            w = h[max(0, end - max_len - 1) : end]
            x, y = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64)
            x[: len(w) - 1], y[: len(w) - 1] = w[:-1], w[1:]
            xs.append(x)
            ys.append(y)
            end -= max_len
    if not xs:
        return torch.zeros(0, max_len, dtype=torch.long), torch.zeros(0, max_len, dtype=torch.long)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def make_loss(n_items: int, kind: str, negatives: int):
    """(model, (inputs, targets)) -> mean loss over the non-padding positions."""

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        width = int(torch.nonzero((y > 0).any(0)).max()) + 1  # padding columns do no work
        x, y = x[:, :width], y[:, :width]
        mask = y > 0
        if kind == "bce":  # SASRec's: the true item against one random item, per position
            neg = torch.randint(1, n_items + 1, y.shape, device=y.device)
            logits = model(x, torch.stack([y, neg], -1)).float()[mask]
            return F.softplus(-logits[:, 0]).mean() + F.softplus(logits[:, 1]).mean()
        if negatives == 0:
            logits = model(x).float()
            logits[..., 0] = -torch.inf
            return F.cross_entropy(logits[mask], y[mask])
        # one candidate set for the whole batch: every target in it plus `negatives` random
        # items (deduplicated, so a sampled item equal to a target is that target, not a negative)
        neg = torch.randint(1, n_items + 1, (negatives,), device=y.device)
        cands, inverse = torch.unique(torch.cat([y[mask], neg]), return_inverse=True)
        logits = model(x, cands).float()[mask]
        return F.cross_entropy(logits, inverse[: int(mask.sum())])

    return loss_fn


def setup_training(
    cfg: Config, run_dir: Path, device: torch.device, rank: int = 0, world: int = 1
) -> TrainSetup:
    seqs, items = load_sequences(run_dir)
    model_cfg = model_config_from(cfg.model)
    if not hasattr(model_cfg, "n_items") or not hasattr(model_cfg, "max_len"):
        from modelworks.config import ConfigError

        raise ConfigError(f"task recommendation needs model.name: sasrec (got {cfg.model.name!r})")
    if model_cfg.n_items == 0:
        model_cfg.n_items = len(items)
    elif model_cfg.n_items != len(items):
        from modelworks.config import ConfigError

        raise ConfigError(f"model.n_items={model_cfg.n_items} but the data has {len(items)} items")
    model = build_model(model_cfg).to(device)
    train_hist, _ = split(seqs, "val")
    x, y = training_windows(train_hist, model_cfg.max_len)
    p = cfg.pretrain
    loader = ExampleLoader(x, y, p.batch_size // world, cfg.seed, rank, world)
    val_hist, val_targets = split(seqs, "val")
    partial = run_dir / "pretrain.partial"  # the item-id mapping travels with the model
    if rank == 0 and partial.is_dir():
        src = run_dir / "preprocess" / "items.json"
        atomic_write_text(partial / "items.json", src.read_text())

    def validate(m: nn.Module) -> dict[str, float]:
        scores = m.next_item_scores(val_hist)
        loss = F.cross_entropy(scores[:, 1:], torch.from_numpy(val_targets) - 1).item()
        for i, h in enumerate(val_hist):
            scores[i, torch.from_numpy(h)] = -torch.inf
        scores[:, 0] = -torch.inf
        ranks = (scores > scores.gather(1, torch.from_numpy(val_targets)[:, None])).sum(1)
        m10 = ranking.hr_ndcg(ranks.numpy(), [10])
        return {"val_loss": loss, "val_ndcg@10": m10["ndcg@10"], "val_hr@10": m10["hr@10"]}

    o = TASK.options_from(cfg)
    loss_fn = make_loss(model_cfg.n_items, o.loss, o.negatives)
    return TrainSetup(model, loss_fn, loader, validate, p.batch_size // world, "seq", None)


# ---------------------------------------------------------------------------------------------
# Evaluate


def compare(
    model: nn.Module | None,
    seqs: list[np.ndarray],
    n_items: int,
    max_len: int,
    ks: list[int],
    n_negatives: int,
    seed: int,
    device="cpu",
    which: str = "test",
    neighbors: int = 100,
) -> dict[str, dict]:
    """{method: {'full': {...}, 'sampled': {...}}} for SASRec (when given), popularity and
    item-kNN on one leave-one-out split. Every method learns from the same interactions (the
    training histories, as SASRec) and reads the same history at prediction time."""
    hist, targets = split(seqs, which)
    train_hist, _ = split(seqs, "val")
    negatives = ranking.sample_negatives(seqs, n_items, n_negatives, seed)
    pop = ranking.popularity(train_hist, n_items)
    knn = ranking.ItemKNN(train_hist, n_items, neighbors)
    methods = {
        "popularity": lambda users: pop.expand(len(users), -1),
        "item_knn": lambda users: knn.scores([hist[u] for u in users]),
    }
    if model is not None:
        methods = {
            "sasrec": lambda users: model.next_item_scores([hist[u] for u in users]),
            **methods,
        }
    return {
        name: ranking.evaluate_ranking(fn, hist, targets, negatives, n_items, ks, seed)
        for name, fn in methods.items()
    }


def evaluate(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt: Checkpoint | None = None
):
    """Scores `ckpt` (evaluate/checkpoint.py; default: the one it chooses) on the test split."""
    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.runtime import resolve_device
    from modelworks.train.checkpoint import load_model

    device = resolve_device(cfg.device)
    ckpt = ckpt or choose_checkpoint(cfg)
    model = load_model(ckpt.folder, device).eval()
    seqs, items = load_sequences(run_dir)
    o = TASK.options_from(cfg)
    ks, n_neg = sorted(set(o.ks)), o.sampled_negatives
    results = compare(
        model, seqs, len(items), model.cfg.max_len, ks, n_neg, cfg.seed, device, "test"
    )
    k10 = 10 if 10 in ks else ks[len(ks) // 2]
    key = f"ndcg@{k10}"
    ours = results["sasrec"]["full"][key]
    beats = all(ours > r["full"][key] for m, r in results.items() if m != "sasrec")
    metrics = {
        "split": "test",
        "rows": len(seqs),
        "users": len(seqs),
        "items": len(items),
        "protocols": {
            "full": "target ranked against every item not in the user's history",
            "sampled": f"target ranked against {n_neg} sampled items the user never had",
        },
        "full": {m: r["full"] for m, r in results.items()},
        f"sampled_{n_neg}": {m: r["sampled"] for m, r in results.items()},
        f"sasrec_beats_baselines_full_{key}": beats,
    }
    pop, knn = results["popularity"]["full"][key], results["item_knn"]["full"][key]
    reporter.info(
        f"[evaluate] test {key}: SASRec {ours:.4f}, popularity {pop:.4f}, item-kNN {knn:.4f} "
        f"(full ranking over {len(items)} items, {len(seqs)} users)"
    )
    trained = json.loads((ckpt.stage_dir / "manifest.json").read_text())["summary"]
    stats = json.loads((run_dir / "preprocess" / "stats.json").read_text())
    data = md_table(
        [
            ("users", str(stats["users"])),
            ("items", str(stats["items"])),
            ("interactions", str(stats["interactions"])),
            ("users dropped: one interaction", str(stats["users_one_interaction"])),
            (
                "users / items dropped by the k-core",
                f"{stats['users_below_k_core']} / {stats['items_below_k_core']}",
            ),
            ("split", stats["split"]),
        ]
    )
    sections = [
        ("Data", data),
        (
            f"Results: full ranking over all {len(items)} items (test split)",
            results_table(results, ks, "full"),
        ),
        (f"Results: {n_neg} sampled negatives (test split)", results_table(results, ks, "sampled")),
        ("Training", training_table(trained)),
    ]
    return metrics, sections, []


def results_table(results: dict, ks: list[int], protocol: str) -> str:
    names = {"sasrec": "SASRec", "popularity": "popularity", "item_knn": "item-kNN"}
    head = ["method", *[f"HR@{k}" for k in ks], *[f"NDCG@{k}" for k in ks]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in results.items():
        vals = [r[protocol][f"hr@{k}"] for k in ks] + [r[protocol][f"ndcg@{k}"] for k in ks]
        lines.append(f"| {names.get(m, m)} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines)


TASK = Task(
    name="recommendation",
    prepare=prepare,
    setup_training=setup_training,
    evaluate=evaluate,
    serve_routes=serve_routes,
    options=Options,
)
