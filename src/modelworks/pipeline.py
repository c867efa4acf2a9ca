"""Runs the lifecycle: collect -> preprocess -> pretrain -> finetune -> evaluate, skipping
finished stages. `finetune` runs when the config has a `finetune:` section; `pretrain` is then
skipped unless the fine-tune starts from it (`finetune.from: pretrain`), and `evaluate` measures
the fine-tuned model.

A stage is skipped when its manifest is complete and records the same config hash and the same
input digests; `force` re-runs named stages. A pretrain interrupted midway resumes from its last
checkpoint on the next run.

    modelworks run                       # configs/quickstart.yaml, or the built-in defaults
    modelworks run configs/quickstart.yaml --force pretrain
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from modelworks.artifacts import (
    StageWriter,
    atomic_write_text,
    input_ref,
    is_up_to_date,
    read_manifest,
    recover,
    require_stage,
)
from modelworks.config import Config, ConfigError, dump_config
from modelworks.progress import Reporter


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


def stage_writer(cfg: Config, stage: str) -> StageWriter:
    """The writer for `stage`, with its config hash and verified upstream inputs."""
    spec = stage_spec(cfg, stage)
    run_dir = cfg.run_dir
    for s in (*spec.inputs, stage):
        recover(run_dir, s)
    inputs = [input_ref(run_dir, s, require_stage(run_dir, s, stage)) for s in spec.inputs]
    config = {k: _dump(getattr(cfg, k)) for k in spec.keys}
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    return StageWriter(run_dir, stage, config, cfg.section_hash(*spec.keys), inputs)


def _dump(v):
    return v.model_dump(mode="json") if hasattr(v, "model_dump") else v


def stage_functions() -> dict[str, Callable[[Config, Reporter | None], dict]]:
    from modelworks.collect import collect
    from modelworks.evaluate import evaluate
    from modelworks.finetune import finetune
    from modelworks.preprocess import preprocess
    from modelworks.train import pretrain

    return {
        "collect": collect,
        "preprocess": preprocess,
        "pretrain": pretrain,
        "finetune": finetune,
        "evaluate": evaluate,
    }


def run(cfg: Config, force: Iterable[str] = (), reporter: Reporter | None = None) -> dict:
    """Run every stage that is missing or stale; returns {stage: 'ran' | 'skipped'}."""
    reporter = reporter or Reporter()
    force = set(force)
    unknown = force - set(STAGES)
    if unknown:
        raise ConfigError(f"--force {sorted(unknown)[0]!r}: not a stage; stages: {list(STAGES)}")
    done = {}
    functions = stage_functions()
    for stage in active_stages(cfg):
        fn, spec = functions[stage], stage_spec(cfg, stage)
        recover(cfg.run_dir, stage)
        inputs = [
            input_ref(cfg.run_dir, s, read_manifest(cfg.run_dir / s) or {"digest": None})
            for s in spec.inputs
        ]
        fresh = is_up_to_date(cfg.run_dir, stage, cfg.section_hash(*spec.keys), inputs)
        if fresh and stage not in force:
            reporter.info(f"[{stage}] up to date, skipped ({cfg.run_dir / stage})")
            done[stage] = "skipped"
            continue
        reporter.info(f"[{stage}] running")
        if stage in ("pretrain", "finetune"):  # resumable: --force discards the partial run
            fn(cfg, reporter, resume=stage not in force)
        else:
            fn(cfg, reporter)
        done[stage] = "ran"
    return done
