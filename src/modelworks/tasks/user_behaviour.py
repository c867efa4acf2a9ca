"""User behaviour analysis: event logs to funnels, cohorts, segments and purchase propensity.

    modelworks run configs/behaviour.yaml     # built-in data: the seeded shop simulator
    modelworks serve runs/behaviour           # POST /v1/users/score

Preprocess (`prepare`, tasks/user_behaviour_data.py): DuckDB over the collected event log:
counts (duplicates, events out of order, single-event users), the analytics (sessions, the
ordered funnel, weekly retention cohorts, RFM: evaluate/event_analytics.py) and each user's event
tokens before the cutoffs. Training: a causal transformer over the tokens (models/behaviour.py)
with the one Trainer, on next-event prediction plus the propensity head (does the user do
`target_event` in the `horizon_days` after the cutoff?), both on the train window
(cutoff - horizon); validation on 10% of users held out of it. Fine-tune (`finetune.from:
pretrain`, tasks/user_behaviour_head.py): a fresh propensity head fitted on the frozen
transformer's states. Evaluate (the run's last model): the test window
(history before the cutoff, labels after it) against an RFM logistic regression and BG/NBD on the
same split, the simulator's oracle when the log is simulated, k-means segments of the user
embeddings against RFM quantile segments, and the events that weighed most for one user.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modelworks.evaluate import propensity as prop
from modelworks.evaluate import segments as seg
from modelworks.evaluate.event_analytics import plots as analytics_plots
from modelworks.evaluate.report import training_table
from modelworks.models.registry import build_model, model_config_from
from modelworks.tasks.base import Task
from modelworks.tasks.user_behaviour_clicks import click_results, click_scores, click_table
from modelworks.tasks.user_behaviour_data import (
    N_GAPS,
    RFM_FEATURES,
    history_features,
    is_val,
    load_windows,
    prepare,
    training_windows,
)
from modelworks.tasks.user_behaviour_head import setup_finetune
from modelworks.tasks.user_behaviour_options import Options, options_of
from modelworks.tasks.user_behaviour_predict import predict
from modelworks.tasks.user_behaviour_report import (
    analytics_tables,
    log_table,
    results_table,
    why_table,
)
from modelworks.tasks.user_behaviour_serve import serve_routes
from modelworks.train.data import ExampleLoader
from modelworks.train.trainer import TrainSetup

HISTORY_BOUND = "history bound (simulator's Bayes posterior)"


def split_inputs(xx: torch.Tensor, clicks: bool, n_extra: int):
    """(tokens, item history or None, extra ids (B, T, n_extra) or None) of a batch's inputs,
    which `batches` lays side by side: tokens | item history | extra ids (flattened)."""
    t = xx.shape[1] // (1 + clicks + n_extra)
    x, hist = xx[:, :t], xx[:, t : 2 * t] if clicks else None
    ex = xx[:, (1 + clicks) * t :].reshape(len(xx), t, n_extra) if n_extra else None
    return x, hist, ex


def make_loss(weight: float, clicks: bool, n_extra: int = 0):
    """Next-event cross-entropy + weight x propensity BCE (+ the two click heads' BCE). A batch
    is (tokens | item history | extra ids side by side, (propensity label, candidate id, click
    label, whole-history features...))."""

    def loss_fn(model, batch) -> torch.Tensor:
        xx, y = batch
        x, hist, ex = split_inputs(xx, clicks, n_extra)
        width = int((x > 0).sum(1).max())
        x = x[:, :width]
        ex = None if ex is None else ex[:, :width]
        feats = y[:, 3:]
        if clicks:
            out = model(x, hist[:, :width], y[:, 1].long(), feats=feats, extra=ex)
        else:
            out = model(x, feats=feats, extra=ex)
        target = x[:, 1:]
        mask = target > 0
        ce = F.cross_entropy(out[0][:, :-1][mask].float(), target[mask])
        loss = ce + weight * F.binary_cross_entropy_with_logits(out[1].float(), y[:, 0])
        if clicks:
            for logit in out[2:]:
                loss = loss + F.binary_cross_entropy_with_logits(logit.float(), y[:, 2])
        return loss

    return loss_fn


def batches(tensors: dict, window: str, clicks: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a window as make_loss reads them."""
    x, y = tensors[f"{window}_x"], tensors[f"{window}_y"].float()
    feats = history_features(tensors[f"{window}_rfm"])
    ex = tensors.get(f"{window}_extra")
    ex = [] if ex is None else [ex.flatten(1)]
    if not clicks:
        zero = torch.zeros_like(y)
        return torch.cat([x, *ex], 1), torch.cat([torch.stack([y, zero, zero], 1), feats], 1)
    xx = torch.cat([x, tensors[f"{window}_items"] + 1, *ex], 1)
    cand = tensors[f"{window}_cand"].float() + 1
    return xx, torch.cat([torch.stack([y, cand, tensors[f"{window}_click"].float()], 1), feats], 1)


@torch.no_grad()
def score(
    model, x: torch.Tensor, device, feats=None, batch: int = 512, extra=None
) -> tuple[np.ndarray, np.ndarray]:
    """(propensity probabilities, user embeddings) for token sequences, in batches."""
    ps, es = [], []
    for s, xb, h in model.hidden_batches(x, device, extra, batch):
        fb = None if feats is None else feats[s : s + batch].to(device)
        ps.append(torch.sigmoid(model.propensity_logit(model.last(h, xb), fb)).float().cpu())
        es.append(model.pooled(h, xb).float().cpu())
    return torch.cat(ps).numpy(), torch.cat(es).numpy()


def setup_training(cfg, run_dir: Path, device, rank: int = 0, world: int = 1) -> TrainSetup:
    from modelworks.errors import ConfigError

    tensors, users, vocab = load_windows(run_dir)
    model_cfg = model_config_from(cfg.model)
    if not hasattr(model_cfg, "vocab_size") or not hasattr(model_cfg, "max_len"):
        raise ConfigError(
            f"task user_behaviour needs model.name: behaviour (got {cfg.model.name!r})"
        )
    model_cfg.vocab_size = model_cfg.vocab_size or vocab.size
    clicks = "train_cand" in tensors
    if clicks:
        n_items = len(json.loads((run_dir / "preprocess" / "items.json").read_text())["items"])
        model_cfg.n_items = model_cfg.n_items or n_items
    if options_of(cfg).propensity_features:
        model_cfg.n_features = 2 * len(RFM_FEATURES)  # history_features: two scales
    extra = tensors.get("train_extra")
    n_extra = 0 if extra is None else extra.shape[2]
    if n_extra:
        model_cfg.n_extra, model_cfg.extra_buckets = n_extra, options_of(cfg).extra_buckets
    x = tensors["train_x"]
    if model_cfg.vocab_size < vocab.size or model_cfg.max_len < x.shape[1]:
        raise ConfigError(
            f"model.vocab_size / max_len ({model_cfg.vocab_size}, {model_cfg.max_len}) are smaller "
            f"than the data's ({vocab.size}, {x.shape[1]}); leave vocab_size at 0, set max_len "
            "= tasks.user_behaviour.max_len"
        )
    model = build_model(model_cfg).to(device)
    # validation users (10%) are left out of every training window; validation reads the last
    val = torch.tensor([is_val(u) for u in users["train"]])
    p = cfg.pretrain
    xx, yy = batches(tensors, "train", clicks)
    vxx, vyy = xx[val], yy[val]
    parts = [(xx[~val], yy[~val])]
    for w in training_windows(tensors)[1:]:
        keep = torch.tensor([not is_val(u) for u in users[w]])
        parts.append(tuple(t[keep] for t in batches(tensors, w, clicks)))
    xx, yy = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
    if model_cfg.n_features:  # the head reads each whole-history column standardised
        model.feat_mean.copy_(yy[:, 3:].mean(0))
        model.feat_std.copy_(yy[:, 3:].std(0).clamp(min=1e-6))
    loader = ExampleLoader(xx, yy, p.batch_size // world, cfg.seed, rank, world)
    loss_fn = make_loss(options_of(cfg).propensity_weight, clicks, n_extra)
    vex = None if extra is None else extra[val]

    def validate(m) -> dict[str, float]:
        with torch.no_grad():
            losses = [
                loss_fn(m, (vxx[s : s + 512].to(device), vyy[s : s + 512].to(device))).item()
                for s in range(0, len(vxx), 512)
            ]
        probs, _ = score(m, x[val], device, vyy[:, 3:], extra=vex)
        r = prop.metrics(vyy[:, 0].numpy(), probs)
        out = {"val_loss": float(np.mean(losses)), "val_auc": r["auc"], "val_ece": r["ece"]}
        if clicks:
            items, cand = tensors["train_items"][val], tensors["train_cand"][val]
            din, _ = click_scores(m, x[val], items, cand, device, extra=vex)
            out["val_click_auc"] = prop.metrics(vyy[:, 2].numpy(), din)["auc"]
        return out

    return TrainSetup(model, loss_fn, loader, validate, p.batch_size // world, "users")


def oracle(run_dir: Path, users: list[str], cutoff: str, horizon: float):
    """For a simulated log (else None): the simulator's true probabilities for `users`, their
    planted segments, and the best a model of the history can do (the simulator's Bayes
    posterior given the history, `history_probability`)."""
    path = run_dir / "collect" / "truth.parquet"
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    from modelworks.collect.shop_simulator import history_bound, true_probability

    t = pq.read_table(path)
    index = {u: i for i, u in enumerate(t.column("user").to_pylist())}
    rows = np.array([index[u] for u in users])
    cols = {c: t.column(c).to_numpy()[rows] for c in t.column_names if c not in ("user", "segment")}
    segs = np.array(t.column("segment").to_pylist())[rows]
    cut = np.datetime64(cutoff, "us")
    log = pq.read_table(run_dir / "collect" / "events.parquet", columns=["user", "time", "event"])
    bound = history_bound(log, list(segs), users, cut, horizon)
    return true_probability(cols, cut, horizon), segs, bound


def evaluate(cfg, run_dir: Path, out: Path, reporter, ckpt=None):
    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.runtime import resolve_device
    from modelworks.train.checkpoint import load_model

    opt = options_of(cfg)
    device = resolve_device(cfg.device)
    ckpt = ckpt or choose_checkpoint(cfg)
    model = load_model(ckpt.folder, device).eval()
    tensors, users, vocab = load_windows(run_dir)
    stats = json.loads((run_dir / "preprocess" / "stats.json").read_text())
    y = tensors["test_y"].numpy().astype(np.float64)
    test_ex = tensors.get("test_extra")
    p_model, emb = score(
        model, tensors["test_x"], device, history_features(tensors["test_rfm"]), extra=test_ex
    )
    scores = {"behaviour transformer": p_model}
    wins = training_windows(tensors)  # the baseline learns from the same training windows
    scores["RFM logistic regression"] = prop.rfm_logistic(
        torch.cat([tensors[f"{w}_rfm"] for w in wins]).numpy(),
        torch.cat([tensors[f"{w}_y"] for w in wins]).numpy(),
        tensors["test_rfm"].numpy(),
    )
    b = tensors["test_bgnbd"].numpy().astype(np.float64)
    p_bg, bg_how = prop.bgnbd(b[:, 0], b[:, 1], b[:, 2], opt.horizon_days)
    if p_bg is not None:
        scores["BG/NBD"] = p_bg
    truth = oracle(run_dir, users["test"], stats["cutoff"], opt.horizon_days)
    if truth is not None:
        scores[HISTORY_BOUND] = truth[2]
        scores["oracle (simulator truth)"] = truth[0]
    results = {name: prop.metrics(y, p) for name, p in scores.items()}
    prop.reliability_plot(y, scores, out / "reliability.png")
    images = [("reliability.png", "Calibration (reliability) of the propensity scores")]
    images += analytics_plots(
        json.loads((run_dir / "preprocess" / "analytics.json").read_text()), out
    )
    segments, seg_section = segment_users(opt, emb, tensors, vocab, truth, p_model, y, cfg.seed)
    (out / "segments.json").write_text(json.dumps(segments["serving"]))
    feats = history_features(tensors["test_rfm"])
    why = explain_one(model, tensors["test_x"], feats, p_model, vocab, device, test_ex)
    clicks = click_results(run_dir, model, tensors, users, device) if "test_cand" in tensors else {}
    ours, rfm = results["behaviour transformer"]["auc"], results["RFM logistic regression"]["auc"]
    metrics = {
        "split": "test",
        "rows": len(y),
        "task": "propensity",
        "target_event": opt.target_event,
        "horizon_days": opt.horizon_days,
        "cutoff": stats["cutoff"],
        "positives": int(y.sum()),
        "propensity": results,
        "bgnbd_implementation": bg_how,
        "auc_minus_rfm_logistic": ours - rfm,
        "segments": segments["metrics"],
        "click": clicks,
        "explanation": why,
        "analytics": json.loads((run_dir / "preprocess" / "analytics.json").read_text()),
        "log": {
            k: stats[k]
            for k in ("events", "users", "duplicates", "out_of_order", "single_event_users")
        },
    }
    if truth is not None:
        metrics["auc_gap_to_oracle"] = results["oracle (simulator truth)"]["auc"] - ours
        metrics["auc_gap_to_history_bound"] = results[HISTORY_BOUND]["auc"] - ours
    reporter.info(
        f"[evaluate] propensity AUC: transformer {ours:.4f}, RFM logistic {rfm:.4f}"
        + (f", BG/NBD {results['BG/NBD']['auc']:.4f}" if "BG/NBD" in results else "")
        + (
            f", history bound {results[HISTORY_BOUND]['auc']:.4f}, "
            f"oracle {results['oracle (simulator truth)']['auc']:.4f}"
            if truth is not None
            else ""
        )
    )
    trained = json.loads((ckpt.stage_dir / "manifest.json").read_text())["summary"]
    sections = [
        ("Event log", log_table(stats)),
        ("Analytics", analytics_tables(metrics["analytics"], opt.min_group)),
        (
            f"Propensity: {opt.target_event} within {opt.horizon_days:g} days of "
            f"{stats['cutoff']} (test window, {len(y):,} users)",
            results_table(results, bg_how),
        ),
        ("Segments", seg_section),
        *(
            [("Click: (user, candidate item) pairs, test window", click_table(clicks))]
            if clicks
            else []
        ),
        ("Why: the events that weighed most for the highest-scored user", why_table(why)),
        ("Training", training_table(trained)),
    ]
    return metrics, sections, images


def segment_users(opt, emb, tensors, vocab, truth, p_model, y, seed):
    z, mean, std = seg.standardize(emb)
    labels, centroids, tried = seg.kmeans(z, opt.segments, seed)
    rfm = seg.quantile_segments(tensors["test_rfm"].numpy())
    m = {
        "k": int(centroids.shape[0]),
        "silhouette_tried": tried,
        "silhouette": seg.silhouette(z, labels, seed),
        "rfm_quantile_silhouette": seg.silhouette(z, rfm, seed),
    }
    if truth is not None:
        m["ari_vs_planted"] = seg.ari(truth[1], labels)
        m["rfm_quantile_ari_vs_planted"] = seg.ari(truth[1], rfm)
    x = tensors["test_x"].numpy()
    value = np.where((x > 0) & (x < vocab.cutoff_base), (x - 1) // (len(vocab.events) * N_GAPS), -1)
    rows = [("segment", "users", "mean propensity", "observed rate", "top categories/items")]
    profiles = []
    for k in range(len(centroids)):
        idx = labels == k
        n = int(idx.sum())
        counts = np.bincount(value[idx][value[idx] >= 0], minlength=len(vocab.values))
        top = [vocab.values[i] for i in np.argsort(-counts)[:3]]
        profiles.append({"segment": k, "users": n, "top": top})
        hidden = n < opt.min_group
        rows.append(
            (
                str(k),
                seg.hide_small(n, opt.min_group),
                "-" if hidden else f"{p_model[idx].mean():.3f}",
                "-" if hidden else f"{y[idx].mean():.3f}",
                "-" if hidden else ", ".join(top),
            )
        )
    table = "\n".join(
        "| " + " | ".join(r) + " |" + ("\n|---|---|---|---|---|" if i == 0 else "")
        for i, r in enumerate(rows)
    )
    lines = [
        f"k-means on user embeddings: k = {m['k']}, silhouette {m['silhouette']:.3f} "
        f"(RFM quantile segments: {m['rfm_quantile_silhouette']:.3f})"
    ]
    if truth is not None:
        lines.append(
            f"Adjusted Rand index against the planted segments: embeddings "
            f"{m['ari_vs_planted']:.3f}, RFM quantile segments "
            f"{m['rfm_quantile_ari_vs_planted']:.3f}"
        )
    serving = {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "centroids": centroids.tolist(),
        "profiles": profiles,
        "min_group": opt.min_group,
    }
    return {"metrics": m, "serving": serving}, "\n\n".join([*lines, table])


def explain_one(model, x_all, feats, p_model, vocab, device, extra=None, top: int = 5) -> dict:
    i = int(np.argmax(p_model))
    x = x_all[i : i + 1].to(device)
    ex = None if extra is None else extra[i : i + 1].to(device)
    p, attr = model.attributions(x, feats[i : i + 1].to(device), ex)
    n = int((x > 0).sum()) - 1  # the cutoff token is not an event
    order = np.argsort(-np.abs(attr[:n]))[:top]
    return {
        "propensity": p,
        "events": [
            {
                "position": int(j),
                "from_end": int(n - j),
                **vocab.describe(int(x[0, j])),
                "weight": float(attr[j]),
            }
            for j in order
        ],
    }


TASK = Task(
    name="user_behaviour",
    prepare=prepare,
    setup_training=setup_training,
    evaluate=evaluate,
    setup_finetune=setup_finetune,
    serve_routes=serve_routes,
    options=Options,
    predict=predict,
)
