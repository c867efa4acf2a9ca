"""Image generation's data and its judge: images scaled to [-1, 1], and the independent
classifier the metrics use.

The judge is a small CNN (models/cnn.py) that preprocess trains on the same training split
through the one Trainer, before and apart from the generator; its pooled penultimate features
are the FID features, its predictions the class-accuracy score. It is written to
`<run>/preprocess/judge/` with its own training log and its held-out accuracy in stats.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from modelworks.models.flow import from_uint8
from modelworks.progress import Reporter

JUDGE = "judge"


def load_images(run_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Images (N, C, H, W) in [-1, 1], labels (N,), and labels.json."""
    pre = Path(run_dir) / "preprocess"
    meta = json.loads((pre / "labels.json").read_text())
    data = load_file(str(pre / "data.safetensors"))
    return from_uint8(data[f"{split}_x"]), data[f"{split}_y"], meta


def train_judge(cfg, pre: Path, steps: int, reporter: Reporter, device: torch.device) -> dict:
    """Train the judge on `pre`'s train split (best validation accuracy kept); returns its
    validation and test accuracy."""
    from modelworks.config import PretrainConfig
    from modelworks.models.cnn import CNNConfig
    from modelworks.models.registry import build_model
    from modelworks.train.checkpoint import save_model
    from modelworks.train.data import ExampleLoader
    from modelworks.train.trainer import Trainer, TrainSetup

    meta = json.loads((pre / "labels.json").read_text())
    data = load_file(str(pre / "data.safetensors"))
    x, y = from_uint8(data["train_x"]), data["train_y"]
    vx, vy = from_uint8(data["val_x"]), data["val_y"]
    torch.manual_seed(cfg.seed)
    model = build_model(
        CNNConfig(meta["image_size"], meta["channels"], len(meta["classes"]), widths=[32, 64])
    ).to(device)

    def loss(m: nn.Module, batch) -> torch.Tensor:
        return F.cross_entropy(m(batch[0]), batch[1])

    def validate(m: nn.Module) -> dict[str, float]:
        logits = _batched(m, vx, device)
        return {
            "val_loss": F.cross_entropy(logits, vy).item(),
            "val_accuracy": (logits.argmax(1) == vy).float().mean().item(),
        }

    out = pre / f"{JUDGE}.train"
    recipe = PretrainConfig(
        steps=steps, batch_size=64, lr=3e-3, min_lr=1e-5, warmup_steps=min(30, steps // 10),
        weight_decay=0.05, eval_every=max(1, steps // 4), ckpt_every=steps, keep_last=1,
        log_every=max(1, steps // 10), best_metric="val_accuracy", best_mode="max",
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    setup = TrainSetup(model, loss, ExampleLoader(x, y, 64, cfg.seed), validate, 64, "ex")
    reporter.info(f"[preprocess] training the judge (a CNN classifier, {steps} steps)")
    Trainer(setup, recipe, out, device, reporter).fit(resume=False)
    judge = load_judge(out / "best", device)
    save_model(pre / JUDGE, judge)
    shutil.copy(out / "metrics.jsonl", pre / JUDGE / "metrics.jsonl")
    shutil.rmtree(out)
    scores = {"val_accuracy": _accuracy(judge, vx, vy, device)}
    if len(data["test_y"]):
        scores["test_accuracy"] = _accuracy(
            judge, from_uint8(data["test_x"]), data["test_y"], device
        )
    return scores


def load_judge(folder: Path, device) -> nn.Module:
    from modelworks.train.checkpoint import load_model

    return load_model(folder, device).eval()


@torch.no_grad()
def _batched(m: nn.Module, x: torch.Tensor, device, fn=None, batch: int = 512) -> torch.Tensor:
    fn = fn or m
    outs = [fn(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(outs) if outs else torch.zeros(0)


def _accuracy(judge: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> float:
    return float((_batched(judge, x, device).argmax(1) == y).float().mean())


def judge_features(judge: nn.Module, x: torch.Tensor, device) -> np.ndarray:
    """The judge's pooled penultimate features (N, width): what FID compares."""

    def pooled(batch: torch.Tensor) -> torch.Tensor:
        return judge.head[:2](judge.features(batch))  # average pool + flatten

    return _batched(judge, x, device, pooled).numpy()


def judge_predict(judge: nn.Module, x: torch.Tensor, device) -> torch.Tensor:
    return _batched(judge, x, device).argmax(1)
