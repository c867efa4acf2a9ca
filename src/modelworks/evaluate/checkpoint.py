"""Which checkpoint evaluate scores, and the lines that say what was scored. One place for every
task, so that two runs' reports compare like with like.

    modelworks evaluate CONFIG                          # best validation checkpoint, else final
    modelworks evaluate CONFIG --checkpoint final       # or best, or step_000200

`evaluate.checkpoint: auto` (the default) scores the best validation checkpoint where training
kept one (`<stage>/best/`, saved whenever `best_metric` improved at a validation check), else
the final model; `final`, `best` or a checkpoint name under `<stage>/checkpoints/` override it.
The weights come from `Checkpoint.folder`; the tokenizer and the task's files stay in
`Checkpoint.stage_dir` (`<run>/pretrain/` or `<run>/finetune/`).

Each report opens with what was scored: the split and its rows, the checkpoint (name, step, its
validation metric) and the run's config hash; metrics.json carries the same. When no split was
asked for and the run has no test split, the first line after the title warns that the numbers
are on the validation split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from modelworks.artifacts import checkpoint_folder
from modelworks.config import Config
from modelworks.errors import EvaluateError

# the config parts that make a run's numbers what they are (not its name, folder or device)
RUN_KEYS = (
    "task",
    "tasks",
    "seed",
    "collect",
    "preprocess",
    "model",
    "pretrain",
    "finetune",
    "evaluate",
)


@dataclass(frozen=True)
class Checkpoint:
    name: str  # best, final, or a checkpoint folder's name (step_000200)
    folder: Path  # model.safetensors + config.json
    stage_dir: Path  # <run>/pretrain or <run>/finetune: tokenizer, manifest, task files
    step: int | None  # the optimizer step its weights are from
    metric: str  # the training's best_metric (val_loss, val_accuracy, val_ndcg@10...)
    value: float | None  # that metric at `step`, None when no validation ran there

    def describe(self) -> str:
        """'best (step 200, val_loss 0.4123)'."""
        parts = [f"step {self.step}" if self.step is not None else "step unknown"]
        if self.value is not None:
            parts.append(f"{self.metric} {self.value:.4f}")
        return f"{self.name} ({', '.join(parts)})"

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "step": self.step,
            "metric": self.metric,
            "value": self.value,
            "folder": str(self.folder),
        }


def names(stage_dir: Path) -> list[str]:
    """The checkpoints a trained stage has: final, best (when kept), then step_* folders."""
    out = ["final"]
    if (stage_dir / "best" / "config.json").is_file():
        out.append("best")
    ckpts = stage_dir / "checkpoints"
    if ckpts.is_dir():
        out += sorted(p.name for p in ckpts.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))
    return out


def choose_checkpoint(cfg: Config, which: str | None = None) -> Checkpoint:
    """The checkpoint `which` (default `cfg.evaluate.checkpoint`) names in the run's model
    stage; an unknown name is one line listing the names that exist."""
    from modelworks.lifecycle import model_stage

    stage = model_stage(cfg)
    stage_dir = cfg.run_dir / stage
    which = which or cfg.evaluate.checkpoint
    train_cfg = cfg.finetune if stage == "finetune" else cfg.pretrain
    metric = train_cfg.best_metric
    have = names(stage_dir)
    if which == "auto":
        which = "best" if "best" in have else "final"
    if which not in have:
        raise EvaluateError(
            f"--checkpoint {which!r}: {stage_dir} has no such checkpoint; it has: {', '.join(have)}"
        )
    folder = checkpoint_folder(stage_dir, which)
    if which == "final":
        step = _summary(stage_dir).get("steps")
        value = _logged(stage_dir, step, metric)
    elif which == "best":
        record = folder / "best.json"  # {"step": N, **the validation metrics at N}
        record = json.loads(record.read_text()) if record.is_file() else {}
        step, value = record.get("step"), record.get(metric)
    else:
        step = _step_of(folder)
        value = _logged(stage_dir, step, metric)
    if not (folder / "model.safetensors").is_file():
        raise EvaluateError(
            f"{folder}: a sharded checkpoint (FSDP/TP); consolidate it first with `modelworks "
            f"export {cfg.run_dir} OUT --format safetensors --checkpoint {which}`"
        )
    return Checkpoint(which, folder, stage_dir, step, metric, value)


def _summary(stage_dir: Path) -> dict:
    path = stage_dir / "manifest.json"
    return json.loads(path.read_text()).get("summary", {}) if path.is_file() else {}


def _step_of(folder: Path) -> int | None:
    sums = folder / "checksums.json"
    if sums.is_file():
        return json.loads(sums.read_text()).get("step")
    digits = folder.name.rpartition("_")[2]
    return int(digits) if digits.isdigit() else None


def _logged(stage_dir: Path, step: int | None, metric: str) -> float | None:
    """`metric` as metrics.jsonl logged it at `step` (validation runs at the last step too)."""
    path = stage_dir / "metrics.jsonl"
    if step is None or not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record.get("step") == step and metric in record:
                return record[metric]
    return None


def run_config_hash(cfg: Config) -> str:
    """A hash of everything in the config that shapes the run's numbers (RUN_KEYS)."""
    return cfg.section_hash(*RUN_KEYS)


def no_test_warning(cfg: Config, split: str, ckpt: Checkpoint) -> str | None:
    """The warning for a default evaluation that had to fall back from a test split."""
    if cfg.evaluate.split is not None or split == "test":
        return None
    chose = ", the split that also chose this checkpoint," if ckpt.name == "best" else ""
    return (
        f"Warning: this run has no test split, so these numbers are on the {split!r} "
        f"split{chose} and may be optimistic; hold out a test split for an unbiased score."
    )


def scored(cfg: Config, metrics: dict, ckpt: Checkpoint) -> tuple[dict, list[str]]:
    """(metrics with split, rows, checkpoint, config hash and warnings first; the report's
    opening lines, a warning first when there is one)."""
    split, rows = metrics["split"], metrics["rows"]
    warning = no_test_warning(cfg, split, ckpt)
    head = {
        "split": split,
        "rows": rows,
        "checkpoint": ckpt.as_json(),
        "config_hash": run_config_hash(cfg),
    }
    if warning:
        head["warnings"] = [warning, *metrics.get("warnings", [])]
    lines = [f"**{warning}**"] if warning else []
    lines += [
        f"- split: {split} ({rows:,} rows)",
        f"- checkpoint: {ckpt.describe()}",
        f"- config hash: {head['config_hash']}",
    ]
    return {**head, **{k: v for k, v in metrics.items() if k not in head}}, lines
