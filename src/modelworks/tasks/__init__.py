"""Tasks: each module owns its data -> batches, head, loss, metrics and report for one problem.

A task module provides three functions the stages call:
    prepare(cfg, run_dir, out_dir, reporter) -> stats          (preprocess stage)
    setup_training(cfg, run_dir, device, rank=0, world=1) -> TrainSetup   (pretrain stage;
        rank/world: this process's data-parallel shard)
    evaluate(cfg, run_dir, out_dir, reporter, ckpt) -> (metrics, sections, images)   (evaluate
        stage; ckpt: the evaluate.checkpoint.Checkpoint to score, None = the one it chooses;
        metrics carry `split` and `rows`, the stage adds the checkpoint and config hash)
and optionally, for `modelworks serve`, one that adds its HTTP endpoints (serve/__init__.py):
    serve_routes(app, run_dir, serve_cfg, device) -> None
and, to be fine-tuned, optionally:
    setup_finetune(cfg, run_dir, device, base) -> (TrainSetup, info)   (finetune stage)
Adding a task means adding a module here and its name below.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from modelworks.errors import ConfigError

TASKS = {
    "language_modeling": "modelworks.tasks.language_modeling",
    "image_classification": "modelworks.tasks.image_classification",
    "text_classification": "modelworks.tasks.text_classification",
    "recommendation": "modelworks.tasks.recommendation",
    "translation": "modelworks.tasks.translation",
    "chat": "modelworks.tasks.chat",
}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise ConfigError(f"task {name!r} is not a known task; known: {sorted(TASKS)}")
    return importlib.import_module(TASKS[name])
