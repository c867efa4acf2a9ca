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

from modelworks.artifacts import input_ref, is_up_to_date, read_manifest, recover
from modelworks.config import Config
from modelworks.errors import ConfigError
from modelworks.lifecycle import (  # noqa: F401  (model_stage, stage_writer: public here too)
    STAGES,
    active_stages,
    model_stage,
    stage_hash,
    stage_spec,
    stage_writer,
)
from modelworks.progress import Reporter


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
    from modelworks.tasks import check_task_config, stage_options

    check_task_config(cfg)  # an unknown task or task option fails here, before any stage runs
    done = {}
    functions = stage_functions()
    for stage in active_stages(cfg):
        fn, spec = functions[stage], stage_spec(cfg, stage)
        recover(cfg.run_dir, stage)
        inputs = [
            input_ref(cfg.run_dir, s, read_manifest(cfg.run_dir / s) or {"digest": None})
            for s in spec.inputs
        ]
        digest = stage_hash(cfg, stage, stage_options(cfg, stage))
        fresh = is_up_to_date(cfg.run_dir, stage, digest, inputs)
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
