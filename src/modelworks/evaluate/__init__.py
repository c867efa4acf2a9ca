"""evaluate: measure the trained model on held-out data and write the run's report.

    modelworks evaluate configs/quickstart.yaml [--checkpoint final|best|step_000200]
        [evaluate.split=test evaluate.bootstrap=1000]

Reads `<run>/pretrain/` (or `<run>/finetune/` when configured) and `<run>/preprocess/`, scoring
the checkpoint evaluate/checkpoint.py chooses (the best validation one where training kept one,
else the final); writes `<run>/evaluate/`: `metrics.json` (what was scored: split, rows,
checkpoint, config hash; then the task's metrics, with 95% bootstrap intervals as
`<metric>_ci`), `loss.png`, `curves.png` (learning rate, throughput), `report.md` (opening with
what was scored, and a warning first when there was no test split), a self-contained
`report.html` (images embedded) and whatever the task adds (generations, confusion matrix,
attention maps, attributions).
"""

from __future__ import annotations

import time

from modelworks.artifacts import atomic_write_json, read_manifest
from modelworks.config import Config
from modelworks.evaluate.checkpoint import choose_checkpoint, scored
from modelworks.evaluate.report import (
    EvaluateError,
    bad_rows_section,
    config_section,
    plot_curves,
    plot_loss,
    read_metrics,
    write_report,
)
from modelworks.progress import Reporter
from modelworks.runtime import setup
from modelworks.tasks import get_task, stage_options


def check_evaluable(cfg: Config) -> None:
    """One clear line for a run that cannot be evaluated, before any work."""
    from modelworks.lifecycle import model_stage

    stage = model_stage(cfg)
    weights = cfg.run_dir / stage / "model.safetensors"
    if not weights.is_file():
        raise EvaluateError(
            f"{cfg.run_dir / stage}: no checkpoint (model.safetensors); train the run first "
            f"with `modelworks {stage}`"
        )
    if cfg.evaluate.tasks and cfg.task != "language_modeling":
        raise EvaluateError(
            f"evaluate.tasks: multiple-choice / exact-match tasks need a language model; "
            f"task {cfg.task!r} does not fit them"
        )


def evaluate(cfg: Config, reporter: Reporter | None = None) -> dict:
    """Run the task's evaluation and write metrics and report; returns the manifest."""
    from modelworks.lifecycle import model_stage, stage_writer

    reporter = reporter or Reporter()
    check_evaluable(cfg)
    ckpt = choose_checkpoint(cfg)  # an unknown --checkpoint fails here, before any work
    writer = stage_writer(cfg, "evaluate", stage_options(cfg, "evaluate"))
    writer.open()
    out = writer.dir
    try:
        setup(cfg.threads, cfg.seed)
        task = get_task(cfg.task)
        metrics, sections, images = task.evaluate(cfg, cfg.run_dir, out, reporter, ckpt=ckpt)
        metrics, opening = scored(cfg, metrics, ckpt)
        for warning in metrics.get("warnings", []):
            reporter.info(f"[evaluate] {warning}")
        reporter.info(f"[evaluate] scored {opening[-3][2:]}; {opening[-2][2:]}")
        atomic_write_json(out / "metrics.json", metrics)
        t0 = time.perf_counter()
        records = read_metrics(cfg.run_dir / model_stage(cfg) / "metrics.jsonl")
        baseline = metrics.get("unigram_loss", metrics.get("baseline_loss"))
        plot_loss(records, out / "loss.png", baseline=baseline)
        curves = [("loss.png", "Loss curve")]
        if plot_curves(records, out / "curves.png"):
            curves.append(("curves.png", "Learning rate and throughput"))
        images = [*curves, *images]
        splits = _split_lines(cfg)
        if splits:
            sections = [*sections, ("Data splits", splits)]
        collected = read_manifest(cfg.run_dir / "collect") or {}
        bad_rows = collected.get("summary", {}).get("bad_rows")
        if bad_rows:
            sections = [*sections, ("Data: rows skipped by collect", bad_rows_section(bad_rows))]
        sections = [*sections, ("Config", config_section(cfg.model_dump(mode="json")))]
        title = f"modelworks report: {cfg.name} ({cfg.task})"
        write_report(out, title, sections, images, opening)
        reporter.info(f"[evaluate] report written in {time.perf_counter() - t0:.2f} s")
    except BaseException:
        writer.discard()
        raise
    writer.summary = metrics
    manifest = writer.commit()
    if cfg.track != "none":
        from modelworks.train.tracking import track_stage

        track_stage(cfg, "evaluate")
    if cfg.evaluate.data:
        from modelworks.evaluate.score import score_data

        for src in cfg.evaluate.data:
            score_data(cfg.run_dir, src, reporter=reporter)
    return manifest


def _split_lines(cfg: Config) -> str:
    """Each split's size and where it came from (a source that named it, or the random draw)."""
    import json

    from modelworks.splits import describe

    stats = cfg.run_dir / "preprocess" / "stats.json"
    splits = json.loads(stats.read_text()).get("splits") if stats.is_file() else None
    return "\n".join(f"- {line}" for line in describe(splits)) if splits else ""
