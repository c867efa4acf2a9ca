"""Preference tuning with DPO (Direct Preference Optimization, Rafailov et al. 2023).

    modelworks pull smollm2-135m-instruct
    modelworks run configs/dpo.yaml               # word problems: worked answer vs corrupted

Data: a `preference` collect source (prompt / chosen / rejected records, or messages-style
chosen / rejected conversations; collect/preference.py) or the built-in `word_problems`. The
model starts from `finetune.from` (a chat run such as runs/assistant, a GGUF or ready model's
name, a Hugging Face folder: base_model.py) and learns to raise the chosen reply's likelihood
over the rejected one's, relative to the reference model (the start), with train/preference.py's
loss: sigmoid (with `label_smoothing`) or ipo, sharpness `beta`.

The reference: with `finetune.method: lora`, the model itself with its adapters switched off (no
second copy of the weights); otherwise its log-probabilities of every pair, computed once before
training and cached. Validation (and the logged step metrics) report the DPO loss, the reward
accuracy (share of pairs whose chosen reward beats the rejected one), the mean margin, and the
chosen / rejected log-probabilities. Evaluate scores the held-out split (test when a source names
one: the word problems' unseen templates) against the base, and answers its prompts greedily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from modelworks.config import Config
from modelworks.progress import Reporter
from modelworks.tasks import preference_data as data
from modelworks.tasks.base import Task, TaskOptions, option, tunes_only
from modelworks.train.preference import IGNORE, adapters_off, dpo_loss, has_adapters
from modelworks.train.trainer import TrainSetup


class Options(TaskOptions):
    beta: float = option(0.1, stage="finetune", gt=0, description="DPO: how sharply the loss ranks")
    label_smoothing: float = option(
        0.0, stage="finetune", ge=0, lt=0.5, description="sigmoid: share of pairs assumed flipped"
    )
    loss: Literal["sigmoid", "ipo"] = option(
        "sigmoid", stage="finetune", description="sigmoid (DPO) or ipo (squared, per-token means)"
    )
    sft_weight: float = option(
        0.0, stage="finetune", ge=0,
        description="add this times the chosen replies' NLL per token (RPO; TRL's rpo_alpha)",
    )  # fmt: skip
    max_new_tokens: int = option(
        48, stage="evaluate", ge=1, description="evaluate: tokens per greedy answer"
    )


def options(cfg: Config) -> Options:
    return TASK.options_from(cfg)


def prepare(cfg: Config, run_dir: Path, out: Path, reporter: Reporter) -> dict:
    return data.prepare(cfg, run_dir, out, reporter, pairs=True)


def setup_finetune(cfg: Config, run_dir: Path, device: torch.device, base) -> tuple:
    opts = options(cfg)
    ft = cfg.finetune
    fmt = data.format_for_base(cfg, run_dir, base)
    max_len = min(ft.seq_len, base.model.cfg.context_len)
    train, n_trunc = data.encode_pairs(fmt, data.load_split(run_dir, "train"), max_len)
    val, v_trunc = data.encode_pairs(fmt, data.load_split(run_dir, "val"), max_len)
    model = base.model.to(device)
    ipo = opts.loss == "ipo"
    cached = ft.method != "lora"  # with LoRA the reference is the model with adapters off
    ref_train = data.reference_logps(model, train, fmt.bos, device, ipo) if cached else None
    ref_val = data.reference_logps(model, val, fmt.bos, device, ipo) if cached else None
    last: dict[str, float] = {}

    def scores(m: nn.Module, x, y, idx, ref_cache):
        chosen, rejected = data.pair_logps(m, x, y, ipo)
        if has_adapters(m):
            with torch.no_grad(), adapters_off(m):
                ref_c, ref_r = data.pair_logps(m, x, y, ipo)
        else:
            ref = ref_cache[idx.cpu()].to(chosen.device)
            ref_c, ref_r = ref[:, 0], ref[:, 1]
        losses, rc, rr = dpo_loss(
            chosen, rejected, ref_c, ref_r, opts.beta, opts.label_smoothing, opts.loss
        )
        if opts.sft_weight:  # the chosen reply's own likelihood, per token (a sum for sigmoid)
            n = (y[: len(chosen)] != IGNORE).sum(-1).clamp(min=1)
            per_token = chosen if ipo else chosen / n
            losses = losses - opts.sft_weight * per_token
        return losses, rc, rr, chosen.detach(), rejected.detach()

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        x, y, idx = batch
        losses, rc, rr, c, r = scores(m, x, y, idx, ref_train)
        last.update(_summary(losses, rc, rr, c, r, "train_"))
        return losses.mean()

    def validate(m: nn.Module) -> dict[str, float]:
        parts = []
        for i in range(0, len(val), ft.batch_size):
            idx = torch.arange(i, min(i + ft.batch_size, len(val)))
            x, y = data.pair_batch(val, idx.tolist(), fmt.bos)
            parts.append(scores(m, x.to(device), y.to(device), idx, ref_val))
        cat = [torch.cat([p[k] for p in parts]) for k in range(5)]
        m_ = _summary(*cat, "val_")
        return {"val_loss": m_.pop("val_dpo_loss"), **m_}

    loader = data.PairLoader(train, fmt.bos, ft.batch_size, cfg.seed)
    info = {
        "max_tokens": max_len,
        "train_pairs": len(train),
        "val_pairs": len(val),
        "train_truncated": n_trunc,
        "val_truncated": v_trunc,
        "reference": "cached log-probs" if cached else "adapters switched off",
        "dpo_loss": opts.loss,
        "beta": opts.beta,
    }
    tokens = ft.batch_size * 2 * max_len
    setup = TrainSetup(model, loss_fn, loader, validate, tokens, step_metrics=lambda: dict(last))
    return setup, info


def _summary(losses, rc, rr, c, r, pre: str) -> dict[str, float]:
    losses = losses.detach()
    return {
        f"{pre}dpo_loss": float(losses.mean()),
        f"{pre}reward_accuracy": float((rc > rr).float().mean()),
        f"{pre}margin": float((rc - rr).mean()),
        f"{pre}chosen_logps": float(c.mean()),
        f"{pre}rejected_logps": float(r.mean()),
    }


def save_finetuned(cfg: Config, out: Path, base) -> None:
    data.save_chat_files(cfg, out, base)


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    from modelworks.tasks.chat import serve_routes as chat_routes

    chat_routes(app, run_dir, cfg, device)


def evaluate(cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt=None):
    from modelworks.tasks.preference_eval import evaluate_tuned

    opts = options(cfg)
    return evaluate_tuned(cfg, run_dir, out, reporter, ckpt, opts.max_new_tokens, opts.beta)


TASK = Task(
    name="dpo",
    prepare=prepare,
    setup_training=tunes_only,
    evaluate=evaluate,
    setup_finetune=setup_finetune,
    save_finetuned=save_finetuned,
    serve_routes=serve_routes,
    options=Options,
)
