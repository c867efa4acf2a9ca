"""The propensity head fine-tuned on the pretrained behaviour model (`finetune.from: pretrain`).

Pretraining fits the head jointly with next-event prediction, about one pass over the labelled
windows. Fine-tuning then fixes the transformer, computes each training user's cutoff state once
and fits a fresh head on (state, whole-history features) for many passes, validation choosing
the step. The fresh head reads the state through `head_state_dim` directions (models/behaviour.py
`state_dim`): the 64-wide state beside ten features let the joint head overfit; squeezed, the head
gains +0.0005 to +0.0015 test AUC on the simulator (RESULTS.md), where the same squeeze inside
joint training lost 0.0003 to 0.0006. Every other weight (body, click heads, feature scaling)
is the base's, unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modelworks.errors import ConfigError
from modelworks.evaluate import propensity as prop
from modelworks.models.behaviour import BehaviourModel
from modelworks.models.registry import build_model
from modelworks.tasks.user_behaviour_data import (
    history_features,
    is_val,
    load_windows,
    training_windows,
)
from modelworks.tasks.user_behaviour_options import options_of
from modelworks.train.data import ExampleLoader
from modelworks.train.trainer import TrainSetup

HEAD = ("propensity.", "propensity_in.")


@torch.no_grad()
def cutoff_states(model: BehaviourModel, x, extra, device, batch: int = 512) -> torch.Tensor:
    """(users, d) the hidden state at each user's cutoff token, the body in eval mode."""
    batches = model.hidden_batches(x, device, extra, batch)
    return torch.cat([model.last(h, xb).float().cpu() for _, xb, h in batches])


def setup_finetune(cfg, run_dir: Path, device, base) -> tuple[TrainSetup, dict]:
    if not isinstance(base.model, BehaviourModel) or not base.model.cfg.n_features:
        raise ConfigError(
            f"finetune.from={cfg.finetune.from_!r}: user_behaviour fine-tunes the propensity head "
            "of a behaviour model pretrained with tasks.user_behaviour.propensity_features: true"
        )
    opt = options_of(cfg)
    arch = replace(base.model.cfg, state_dim=opt.head_state_dim, head_hidden=opt.head_hidden)
    model = build_model(arch)
    state = {k: v for k, v in base.model.state_dict().items() if not k.startswith(HEAD)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(HEAD) for k in missing):
        raise ConfigError(f"finetune.from={cfg.finetune.from_!r}: weights do not fit {arch}")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(HEAD))
    model.to(device).eval()
    tensors, users, _ = load_windows(run_dir)
    parts = []
    for w in training_windows(tensors):
        # as in pretraining: the validation users are out of every window, validated on `train`
        keep = torch.tensor([w == "train" or not is_val(u) for u in users[w]])
        state = cutoff_states(model, tensors[f"{w}_x"], tensors.get(f"{w}_extra"), device)
        x = torch.cat([state, history_features(tensors[f"{w}_rfm"])], 1)
        is_v = torch.tensor([w == "train" and is_val(u) for u in users[w]])
        parts.append((x[keep], tensors[f"{w}_y"].float()[keep], is_v[keep]))
    xs, ys, val = (torch.cat(p) for p in zip(*parts, strict=True))
    d = arch.d_model
    ft = cfg.finetune
    loader = ExampleLoader(xs[~val], ys[~val], ft.batch_size, cfg.seed)

    def loss_fn(m, batch) -> torch.Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(m.propensity_logit(x[:, :d], x[:, d:]), y)

    def validate(m) -> dict[str, float]:
        with torch.no_grad():
            x, y = xs[val].to(device), ys[val].to(device)
            logit = m.propensity_logit(x[:, :d], x[:, d:])
            loss = float(F.binary_cross_entropy_with_logits(logit, y))
        r = prop.metrics(ys[val].numpy(), torch.sigmoid(logit).float().cpu().numpy())
        return {"val_loss": loss, "val_auc": r["auc"], "val_ece": r["ece"]}

    info = {"head_train_rows": int((~val).sum()), "head_val_rows": int(val.sum())}
    info["head_train_positive_rate"] = float(np.mean(ys[~val].numpy()))
    return TrainSetup(model, loss_fn, loader, validate, ft.batch_size, "users"), info
