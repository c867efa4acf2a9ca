"""preprocess: turn collected raw data into training-ready artifacts, as the task needs them.

    modelworks preprocess configs/quickstart.yaml

Language models (preprocess/text.py): clean, filter, dedup, split, BPE tokenizer, token shards.
Image classification (preprocess/images.py): decode, convert, resize, split, uint8 tensors.
Writes `<run>/preprocess/` with `stats.json` (what each step kept and removed).
"""

from __future__ import annotations

from modelworks.artifacts import atomic_write_json
from modelworks.config import Config
from modelworks.progress import Reporter


def preprocess(cfg: Config, reporter: Reporter | None = None) -> dict:
    """Run the task's preprocessing into `<run>/preprocess/`; returns the manifest."""
    from modelworks.lifecycle import stage_writer
    from modelworks.tasks import (  # late: shard workers import this package without torch
        get_task,
        stage_options,
    )

    reporter = reporter or Reporter()
    writer = stage_writer(cfg, "preprocess", stage_options(cfg, "preprocess"))
    writer.open()
    try:
        stats = get_task(cfg.task).prepare(cfg, cfg.run_dir, writer.dir, reporter)
        atomic_write_json(writer.dir / "stats.json", stats)
    except BaseException:
        writer.discard()
        raise
    writer.summary = stats
    return writer.commit()
