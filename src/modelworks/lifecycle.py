"""The lifecycle core, below every stage: which stages exist, what each depends on (config keys
and upstream stages), the writer a stage builds its folder with, and which stage holds a run's
model. Stages import this module; `pipeline.py` (which imports the stages) walks it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from modelworks.artifacts import (
    StageWriter,
    atomic_write_text,
    input_ref,
    recover,
    require_stage,
)
from modelworks.config import Config, dump_config


@dataclass(frozen=True)
class StageSpec:
    keys: tuple[str, ...]  # config parts the stage depends on
    inputs: tuple[str, ...]  # upstream stages


STAGES: dict[str, StageSpec] = {
    "collect": StageSpec(("collect",), ()),
    "preprocess": StageSpec(("task", "preprocess", "seed"), ("collect",)),
    "pretrain": StageSpec(("task", "model", "pretrain", "seed"), ("preprocess",)),
    "finetune": StageSpec(("task", "finetune", "seed"), ("preprocess",)),
    "evaluate": StageSpec(("task", "evaluate", "seed"), ("preprocess", "pretrain")),
}


def load_run(run_dir: str | Path) -> Config:
    """A finished run's own config (its config.yaml), placed where the run folder is now."""
    import yaml

    from modelworks.config import validate_config
    from modelworks.errors import EvaluateError

    run_dir = Path(run_dir)
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        raise EvaluateError(f"{run_dir}: not a run folder (no config.yaml)")
    data = yaml.safe_load(stored.read_text())
    data["runs_dir"], data["name"] = str(run_dir.parent), run_dir.name
    return validate_config(data, source=str(stored))


def model_stage(cfg: Config) -> str:
    """The stage whose model the run ends with: finetune when configured, else pretrain."""
    return "finetune" if cfg.finetune is not None else "pretrain"


def stage_spec(cfg: Config, stage: str) -> StageSpec:
    """STAGES[stage], with the inputs this config gives it (the model evaluate reads, and the
    run's own pretrain when a fine-tune starts from it)."""
    spec = STAGES[stage]
    if stage == "finetune" and cfg.finetune is not None and cfg.finetune.from_ == "pretrain":
        return StageSpec(spec.keys, ("preprocess", "pretrain"))
    if stage == "evaluate":
        return StageSpec(spec.keys, ("preprocess", model_stage(cfg)))
    return spec


def active_stages(cfg: Config) -> list[str]:
    """The stages `run` walks for this config, in order."""
    if cfg.finetune is None:
        return [s for s in STAGES if s != "finetune"]
    skip = set() if cfg.finetune.from_ == "pretrain" else {"pretrain"}
    return [s for s in STAGES if s not in skip]


def stage_hash(cfg: Config, stage: str, task_knobs: dict | None = None) -> str:
    """The hash a stage's manifest records: its config sections, plus the task's knobs that
    feed it (`tasks.stage_options`, given by the caller: this module sits below the tasks)."""
    base = cfg.section_hash(*stage_spec(cfg, stage).keys)
    if not task_knobs:
        return base
    blob = json.dumps([base, task_knobs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_writer(cfg: Config, stage: str, task_knobs: dict | None = None) -> StageWriter:
    """The writer for `stage`, with its config hash and verified upstream inputs; `task_knobs`
    are the task options that feed the stage (`tasks.stage_options(cfg, stage)`)."""
    spec = stage_spec(cfg, stage)
    run_dir = cfg.run_dir
    for s in (*spec.inputs, stage):
        recover(run_dir, s)
    inputs = [input_ref(run_dir, s, require_stage(run_dir, s, stage)) for s in spec.inputs]
    config = {k: _dump(getattr(cfg, k)) for k in spec.keys} | (task_knobs or {})
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    return StageWriter(run_dir, stage, config, stage_hash(cfg, stage, task_knobs), inputs)


def _dump(v):
    return v.model_dump(mode="json") if hasattr(v, "model_dump") else v
