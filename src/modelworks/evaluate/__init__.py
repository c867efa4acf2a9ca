"""evaluate: measure the trained model on held-out data and write the run's report.

    modelworks evaluate configs/quickstart.yaml

Reads `<run>/pretrain/` and `<run>/preprocess/`; writes `<run>/evaluate/`: `metrics.json`,
`loss.png`, `report.md`, `report.html` and whatever the task adds (generations, confusion matrix).
"""

from __future__ import annotations

from modelworks.artifacts import atomic_write_json
from modelworks.config import Config
from modelworks.evaluate.report import plot_loss, read_metrics, write_report
from modelworks.progress import Reporter
from modelworks.runtime import setup
from modelworks.tasks import get_task


def evaluate(cfg: Config, reporter: Reporter | None = None) -> dict:
    """Run the task's evaluation and write metrics and report; returns the manifest."""
    from modelworks.pipeline import stage_writer

    reporter = reporter or Reporter()
    writer = stage_writer(cfg, "evaluate")
    writer.open()
    out = writer.dir
    try:
        setup(cfg.threads, cfg.seed)
        metrics, sections, images = get_task(cfg.task).evaluate(cfg, cfg.run_dir, out, reporter)
        atomic_write_json(out / "metrics.json", metrics)
        records = read_metrics(cfg.run_dir / "pretrain" / "metrics.jsonl")
        baseline = metrics.get("unigram_loss", metrics.get("baseline_loss"))
        plot_loss(records, out / "loss.png", baseline=baseline)
        images = [("loss.png", "Loss curve"), *images]
        write_report(out, f"modelworks report: {cfg.name} ({cfg.task})", sections, images)
    except BaseException:
        writer.discard()
        raise
    writer.summary = metrics
    return writer.commit()
