"""pretrain: train a model from scratch on the preprocessed data, through the one trainer.

    modelworks pretrain configs/quickstart.yaml            # one device
    modelworks pretrain configs/mlp.yaml pretrain.steps=2000

Builds in `<run>/pretrain.partial/` (checkpoints/, best/, metrics.jsonl) and, when done, renames
it to `<run>/pretrain/` with the final `model.safetensors` + `config.json`. Killed midway, the same
command resumes from the last good checkpoint.
"""

from __future__ import annotations

from modelworks.config import Config
from modelworks.progress import Reporter
from modelworks.runtime import resolve_device, setup
from modelworks.tasks import get_task
from modelworks.train.checkpoint import save_model
from modelworks.train.trainer import Trainer


def pretrain(cfg: Config, reporter: Reporter | None = None, resume: bool = True) -> dict:
    """Train, checkpoint, and publish `<run>/pretrain/`; returns the manifest."""
    from modelworks.pipeline import stage_writer

    reporter = reporter or Reporter()
    writer = stage_writer(cfg, "pretrain")
    writer.open(resume=resume)
    device = resolve_device(cfg.device)
    setup(cfg.threads, cfg.seed)
    train = get_task(cfg.task).setup_training(cfg, cfg.run_dir, device)
    model = train.model
    n_params = sum(p.numel() for p in model.parameters())
    reporter.info(
        f"[pretrain] {type(model).__name__}, {n_params:,} parameters on {device}; "
        f"{cfg.pretrain.steps} steps of {train.units_per_batch * cfg.pretrain.grad_accum:,} "
        f"{train.unit}"
    )
    summary = Trainer(train, cfg.pretrain, writer.dir, device, reporter).fit(resume=resume)
    summary["parameters"] = n_params
    save_model(writer.dir, model)
    reporter.info(
        f"[pretrain] done: {n_params:,} parameters, {summary['steps']} steps, "
        f"{summary[train.unit]:,} {train.unit}, {summary['seconds_this_process']:.0f} s, "
        f"{summary[f'{train.unit}_per_s']} {train.unit}/s, peak memory "
        f"{summary['peak_memory_mb']:.0f} MB"
    )
    writer.summary = summary
    return writer.commit()
