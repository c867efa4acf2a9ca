"""Image generation: a class-conditional rectified-flow U-Net with classifier-free guidance.

    modelworks run configs/generation.yaml        # built-in digits: collect -> evaluate
    modelworks serve runs/generation-digits       # POST /v1/images/generations

Data: any image-classification source (folders, IDX, npz, tables, built-in digits), prepared by
preprocess/images.py at `tasks.image_generation.image_size` / `channels`; preprocess then trains
the judge (tasks/image_generation_data.py), the independent classifier that scores samples.
Model: models/unet.py (EMA copy inside), loss and samplers: models/flow.py. Training runs through
the one Trainer; an optimizer-step hook updates the EMA; validation samples with the EMA weights
and logs `val_fid` and `val_class_accuracy` (the FID curve; the best checkpoint by default), and
saves a small grid per check (`pretrain/progress/`), drawn in the report.
Evaluate, on the test split, against baselines in the same run: FID of judge features against
the training images, the judge's class accuracy on guided samples, and the nearest training
image per sample (memorisation), for the real held-out images (the floor), the model with and
without guidance, and a per-class Gaussian (pixel mean + covariance); then FID and accuracy per
sampler step count, a sample grid per class, the grids from training, the FID curve.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from modelworks.artifacts import StageWriter
from modelworks.config import Config
from modelworks.evaluate.generation import (
    EXACT,
    GaussianBaseline,
    fid,
    nearest_distances,
    plot_fid_curve,
    plot_grid,
)
from modelworks.evaluate.report import EvaluateError, md_table, read_metrics, training_table
from modelworks.models.flow import fixed_flow_loss, flow_loss, from_uint8, sample, to_uint8
from modelworks.models.registry import build_model, fill_from_data, model_config_from
from modelworks.preprocess.images import prepare_images
from modelworks.progress import Reporter
from modelworks.tasks.base import TRAIN, Task, TaskOptions, option
from modelworks.tasks.image_generation_data import (
    JUDGE,
    judge_features,
    judge_predict,
    load_images,
    load_judge,
    train_judge,
)
from modelworks.train.checkpoint import load_model
from modelworks.train.data import ExampleLoader
from modelworks.train.trainer import TrainSetup

if TYPE_CHECKING:
    from modelworks.evaluate.checkpoint import Checkpoint

NAME = "image_generation"
PROGRESS = "progress"  # <stage>/progress/step_XXXXXX.npy: a grid of samples per validation


class Options(TaskOptions):
    image_size: int = option(8, stage="preprocess", ge=4, description="images are resized to "
                             "this height and width (the built-in digits are 8x8)")  # fmt: skip
    channels: Literal[1, 3] = option(1, stage="preprocess", description="1: grayscale, 3: RGB")
    judge_steps: int = option(
        200, stage="preprocess", ge=1, description="training steps of the judge, the CNN "
        "classifier whose features (FID) and predictions (class accuracy) score samples",
    )  # fmt: skip
    class_dropout: float = option(
        0.1, stage=TRAIN, ge=0, lt=1,
        description="share of training images shown without their class (classifier-free guidance)",
    )  # fmt: skip
    ema_decay: float = option(0.999, stage=TRAIN, ge=0, lt=1, description="EMA of the weights")
    val_sample_steps: int = option(
        8, stage=TRAIN, ge=1, description="Euler steps of the samples behind the validation FID"
    )
    guidance_scale: float = option(
        1.0, stage=(*TRAIN, "evaluate", "serve"), ge=0, le=20,
        description="classifier-free guidance w: 1 = plain conditional, > 1 more class-typical",
    )  # fmt: skip
    sample_steps: int = option(
        8, stage=("evaluate", "serve"), ge=1, le=1000, description="sampler steps (evaluate, serve)"
    )
    sampler: Literal["euler", "heun"] = option(
        "heun", stage=("evaluate", "serve"), description="euler: 1 network call a step; heun: 2"
    )
    eval_step_counts: list[int] = option(
        None, default_factory=lambda: [1, 2, 4, 8, 16], stage="evaluate",
        description="step counts the report compares (FID, class accuracy, seconds)",
    )  # fmt: skip
    eval_guidance_scales: list[float] = option(
        None, default_factory=lambda: [1.0, 1.25, 1.5, 2.0, 3.0], stage="evaluate",
        description="guidance scales the report compares (FID, class accuracy)",
    )  # fmt: skip
    samples_per_class: int = option(
        10, stage="evaluate", ge=1, le=64, description="images per class in the report's grid"
    )


def options(cfg: Config) -> Options:
    """This task's validated `tasks.image_generation:` section (config load checked it)."""
    return TASK.options_from(cfg)


def prepare(cfg: Config, run_dir: Path, out: Path, reporter: Reporter) -> dict:
    from modelworks.runtime import resolve_device

    opts = options(cfg)
    stats = prepare_images(cfg, run_dir, out, reporter, opts.image_size, opts.channels)
    judge = train_judge(cfg, out, opts.judge_steps, reporter, resolve_device(cfg.device))
    reporter.info(
        "[preprocess] judge accuracy: "
        + ", ".join(f"{k.split('_')[0]} {v:.4f}" for k, v in judge.items())
    )
    return {**stats, "judge": judge}


def setup_training(
    cfg: Config, run_dir: Path, device: torch.device, rank: int = 0, world: int = 1
) -> TrainSetup:
    opts = options(cfg)
    x, y, meta = load_images(run_dir, "train")
    vx, vy, _ = load_images(run_dir, "val")
    model_cfg = model_config_from(cfg.model)
    fill_from_data(model_cfg, n_classes=len(meta["classes"]), image_size=meta["image_size"],
                   channels=meta["channels"])  # fmt: skip
    model = build_model(model_cfg).to(device)
    null = len(meta["classes"])
    judge = load_judge(run_dir / "preprocess" / JUDGE, device)
    train_features = judge_features(judge, x, device)
    progress = StageWriter(run_dir, "pretrain", {}, "").dir / PROGRESS  # the stage's own folder
    grid_labels = torch.arange(null).repeat_interleave(4).to(device)

    def loss(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return flow_loss(m, batch[0], batch[1], null, opts.class_dropout)

    def validate(m: nn.Module) -> dict[str, float]:
        shape = tuple(vx.shape[1:])
        kw = {"null_class": null, "steps": opts.val_sample_steps, "guidance": opts.guidance_scale}
        gen = from_uint8(to_uint8(sample(m.ema, vy.to(device), shape, seed=cfg.seed, **kw)))
        if rank == 0 and progress.parent.is_dir():
            progress.mkdir(exist_ok=True)
            grid = to_uint8(sample(m.ema, grid_labels, shape, seed=cfg.seed + 1, **kw))
            np.save(progress / f"step_{int(m.ema_updates):06d}.npy", grid.numpy())
        return {
            "val_loss": fixed_flow_loss(m.ema, vx.to(device), vy.to(device), cfg.seed),
            "val_fid": fid(judge_features(judge, gen, device), train_features),
            "val_class_accuracy": float((judge_predict(judge, gen, device) == vy).float().mean()),
        }

    def wrap(train_model: nn.Module, optimizer):
        def after_step(opt, args, kwargs) -> None:
            # torch.distributed's optimizer-state init takes one step at lr 0: not a real step
            if any(g["lr"] for g in opt.param_groups):
                model.update_ema(opts.ema_decay)

        optimizer.register_step_post_hook(after_step)
        return train_model, optimizer

    p = cfg.pretrain
    loader = ExampleLoader(x, y, p.batch_size // world, cfg.seed, rank, world)
    return TrainSetup(model, loss, loader, validate, p.batch_size // world, "img", wrap=wrap)


def _sets(cfg, opts, net, x_train, y_train, x, y, device) -> dict[str, torch.Tensor]:
    """The image sets evaluate compares, all quantised to uint8 and back as served images are."""
    shape, null = tuple(x.shape[1:]), net.class_emb.num_embeddings - 1
    kw = {"null_class": null, "steps": opts.sample_steps, "sampler": opts.sampler,
          "seed": cfg.seed}  # fmt: skip
    labels = y.to(device)
    gaussian = GaussianBaseline(x_train, y_train).sample(y, seed=cfg.seed)
    return {
        "real held-out images (floor)": x,
        f"model, guidance {opts.guidance_scale:g}": sample(
            net, labels, shape, guidance=opts.guidance_scale, **kw
        ),
        "model, no guidance (w=1)": sample(net, labels, shape, guidance=1.0, **kw),
        "per-class Gaussian (baseline)": gaussian,
    }


def evaluate(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt: Checkpoint | None = None
):
    """Scores `ckpt` (evaluate/checkpoint.py; default: the best validation FID)."""
    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.runtime import resolve_device

    opts = options(cfg)
    device = resolve_device(cfg.device)
    ckpt = ckpt or choose_checkpoint(cfg)
    net = load_model(ckpt.folder, device).eval().ema
    split = cfg.evaluate.split or "test"
    x, y, meta = load_images(run_dir, split)
    if len(y) == 0 and cfg.evaluate.split is None:
        split = "val"
        x, y, meta = load_images(run_dir, split)
    if len(y) == 0:
        raise EvaluateError(f"{run_dir / 'preprocess'}: the {split!r} split is empty")
    classes = meta["classes"]
    x_train, y_train, _ = load_images(run_dir, "train")
    judge = load_judge(run_dir / "preprocess" / JUDGE, device)
    f_train = judge_features(judge, x_train, device)
    rows, scores, near = [], {}, {}
    sets = {k: from_uint8(to_uint8(v)) for k, v in
            _sets(cfg, opts, net, x_train, y_train, x, y, device).items()}  # fmt: skip
    for name, imgs in sets.items():
        near[name] = nearest_distances(imgs, x_train)
        s = {
            "fid": fid(judge_features(judge, imgs, device), f_train),
            "class_accuracy": float((judge_predict(judge, imgs, device) == y).float().mean()),
            "nearest_train_rms_median": float(np.median(near[name])),
        }
        scores[name] = s
        rows.append(f"| {name} | {s['fid']:.3f} | {s['class_accuracy']:.4f} | "
                    f"{s['nearest_train_rms_median']:.3f} |")  # fmt: skip
    names = list(scores)
    floor, model, unguided, gauss = (scores[n] for n in names)
    # memorisation: the share of samples closer to a training image than any held-out image is
    copies = float(np.mean(near[names[1]] < near[names[0]].min()))
    steps_rows, w_rows, per_steps, per_w = _sweep(cfg, opts, net, judge, f_train, x, y, device)
    metrics = {
        "split": split,
        "rows": len(y),
        "examples": len(y),
        "fid": model["fid"],
        "class_accuracy": model["class_accuracy"],
        "real_fid": floor["fid"],
        "real_class_accuracy": floor["class_accuracy"],
        "unguided_fid": unguided["fid"],
        "unguided_class_accuracy": unguided["class_accuracy"],
        "gaussian_fid": gauss["fid"],
        "gaussian_class_accuracy": gauss["class_accuracy"],
        "fid_vs_gaussian": model["fid"] / gauss["fid"] if gauss["fid"] else None,
        "nearest_train_rms_median": model["nearest_train_rms_median"],
        "real_nearest_train_rms_median": floor["nearest_train_rms_median"],
        "closer_than_any_real_share": copies,
        "sample_steps": opts.sample_steps,
        "sampler": opts.sampler,
        "guidance_scale": opts.guidance_scale,
        "per_step_count": per_steps,
        "per_guidance_scale": per_w,
        "classes": classes,
    }
    reporter.info(
        f"[evaluate] {split}: FID {model['fid']:.3f} (Gaussian baseline {gauss['fid']:.3f}, real "
        f"held-out {floor['fid']:.3f}), class accuracy {model['class_accuracy']:.4f} "
        f"({opts.sample_steps} {opts.sampler} steps, guidance {opts.guidance_scale:g})"
    )
    # the FID curve's reference lines, on the validation images (FID depends on the set size)
    vx, vy, _ = load_images(run_dir, "val")
    val_gauss = from_uint8(to_uint8(GaussianBaseline(x_train, y_train).sample(vy, seed=cfg.seed)))
    val_lines = {
        "real validation images": fid(judge_features(judge, vx, device), f_train),
        "per-class Gaussian (validation labels)": fid(
            judge_features(judge, val_gauss, device), f_train
        ),
    }
    metrics["val_real_fid"], metrics["val_gaussian_fid"] = val_lines.values()
    images = _pictures(cfg, opts, net, ckpt, out, classes, tuple(x.shape[1:]), val_lines, device)
    _plot_nearest(sets[names[1]], y, x_train, out / "nearest.png")
    images.append(("nearest.png", "Memorisation check: samples and their nearest training images"))
    head = (
        "| images | FID (judge features) | class accuracy (judge) | median RMS to nearest train |"
    )
    results = "\n".join([head, "|---|---|---|---|", *rows])
    trained = json.loads((ckpt.stage_dir / "manifest.json").read_text())["summary"]
    stats = json.loads((run_dir / "preprocess" / "stats.json").read_text())
    judge_acc = stats.get("judge", {})
    notes = md_table([
        (f"{split} images (each set has as many, with the same labels)", str(len(y))),
        ("FID / Gaussian baseline FID", f"{metrics['fid_vs_gaussian']:.3f}"),
        ("samples closer to a training image than any held-out image is", f"{copies:.4f}"),
        ("judge accuracy on real images (val / test)",
         " / ".join(f"{v:.4f}" for v in judge_acc.values())),
    ])  # fmt: skip
    sections = [
        (f"Results ({split} split)", results + "\n\n" + notes),
        ("How these are measured", _HOW),
        (f"Sampler step counts (guidance {opts.guidance_scale:g})", steps_rows),
        (f"Guidance scales ({opts.sample_steps} {opts.sampler} steps)", w_rows),
        ("Training", training_table(trained)),
    ]
    return metrics, sections, images


_HOW = (
    "FID is the Fréchet distance between Gaussians fitted to the judge's pooled features of "
    "each image set and of the training images; the judge is a CNN classifier trained by "
    "preprocess on the same training split (not Inception), so the figures compare models "
    "within this project only. Class accuracy: the judge's prediction against the class asked "
    "for. The real held-out images are the floor each generator is measured against; the "
    "per-class Gaussian (pixel mean and covariance of the training images) is the baseline to "
    "beat. The nearest-training-image distance checks memorisation: copies would sit near 0, "
    "far below the held-out images' own distance."
)


def _sweep(cfg, opts, net, judge, f_train, x, y, device) -> tuple[str, str, dict, dict]:
    """FID, class accuracy and time per sampler step count (at the run's guidance), and per
    guidance scale (at the run's step count)."""
    null = net.class_emb.num_embeddings - 1

    def score(steps: int, guidance: float) -> dict:
        t0 = time.perf_counter()
        gen = sample(net, y.to(device), tuple(x.shape[1:]), null, steps=steps,
                     guidance=guidance, sampler=opts.sampler, seed=cfg.seed)  # fmt: skip
        ms = 1000 * (time.perf_counter() - t0) / len(y)
        gen = from_uint8(to_uint8(gen))
        return {
            "fid": fid(judge_features(judge, gen, device), f_train),
            "class_accuracy": float((judge_predict(judge, gen, device) == y).float().mean()),
            "ms_per_image": ms,
            # heun: two calls a step but one on the last; guidance: two rows a call
            "network_calls": (2 * steps - 1 if opts.sampler == "heun" else steps)
            * (1 if guidance in (0.0, 1.0) else 2),
        }  # fmt: skip

    def table(first: str, rows: dict) -> str:
        lines = [f"| {first} | network calls / image | FID | class accuracy | ms / image |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for k, r in rows.items():
            lines.append(f"| {k} | {r['network_calls']} | {r['fid']:.3f} | "
                         f"{r['class_accuracy']:.4f} | {r['ms_per_image']:.2f} |")  # fmt: skip
        return "\n".join(lines)

    per_steps = {str(k): score(k, opts.guidance_scale) for k in sorted(set(opts.eval_step_counts))}
    per_w = {f"{w:g}": score(opts.sample_steps, w) for w in sorted(set(opts.eval_guidance_scales))}
    return table(f"{opts.sampler} steps", per_steps), table("guidance w", per_w), per_steps, per_w


def _pictures(cfg, opts, net, ckpt, out, classes, shape, val_lines, device) -> list:
    k, null = opts.samples_per_class, len(classes)
    labels = torch.arange(null).repeat_interleave(k)
    grid = to_uint8(sample(net, labels.to(device), shape, null, steps=opts.sample_steps,
                           guidance=opts.guidance_scale, sampler=opts.sampler,
                           seed=cfg.seed))  # fmt: skip
    rows = list(grid.numpy().reshape(null, k, *shape))
    plot_grid(rows, [str(c) for c in classes], out / "samples.png",
              f"Samples per class ({opts.sample_steps} {opts.sampler} steps, "
              f"guidance {opts.guidance_scale:g})")  # fmt: skip
    images = [("samples.png", "Samples per class")]
    grids = sorted((ckpt.stage_dir / PROGRESS).glob("step_*.npy"))
    if grids:
        rows = [np.load(g)[::4] for g in grids]  # the first of four samples per class
        titles = [f"step {int(g.stem.split('_')[1])}" for g in grids]
        plot_grid(rows, titles, out / "progress.png", "One sample per class at each validation")
        images.append(("progress.png", "Samples during training"))
    records = read_metrics(ckpt.stage_dir / "metrics.jsonl")
    if plot_fid_curve(records, out / "fid.png", val_lines):
        images.append(("fid.png", "FID during training"))
    return images


def _plot_nearest(samples: torch.Tensor, y: torch.Tensor, train: torch.Tensor, path: Path) -> None:
    """The first sample of each class above the training image nearest to it."""
    first = [int((y == c).nonzero()[0]) for c in y.unique().tolist()]
    picked = samples[first]
    d = torch.cdist(picked.flatten(1), train.flatten(1), compute_mode=EXACT)
    rows = [to_uint8(picked).numpy(), to_uint8(train[d.argmin(1)]).numpy()]
    plot_grid(rows, ["sample", "nearest train"], path, "Samples and their nearest training images")


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    """`modelworks serve` hook: POST /v1/images/generations (serve/generation.py)."""
    import yaml

    from modelworks.serve.generation import add_routes

    saved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    opts = Options.model_validate((saved.get("tasks") or {}).get(NAME) or {})
    defaults = {"steps": opts.sample_steps, "guidance": opts.guidance_scale,
                "sampler": opts.sampler}  # fmt: skip
    add_routes(app, run_dir, cfg, device, defaults)


TASK = Task(
    name=NAME,
    prepare=prepare,
    setup_training=setup_training,
    evaluate=evaluate,
    serve_routes=serve_routes,
    options=Options,
)
