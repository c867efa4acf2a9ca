"""Score a finished run on new data, given as collect sources, without touching the run.

    modelworks evaluate runs/mlp-digits --data t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
    modelworks evaluate runs/sentiment --data new_reviews.tsv --name reviews-2026
    modelworks evaluate runs/sentiment --data '{type: table, paths: [a.csv], label_field: y}'

`--data PATH...` is one source: the run's first collect source that reads files, with these
paths (so its type, text/label fields and columns carry over); a `{...}` value is a whole
source. `evaluate.data` in a config lists sources the same way, each scored under its own name.

The sources are collected and prepared in a scratch folder the way the run prepared its own test
split, reusing the run's pieces: its tokenizer, label map, image size and channels. Labels the run
never saw are counted and named, and their rows left out (the model cannot predict them). Then
the task's own evaluate scores the run's model on them, so `--data` given the run's test files
gives the run's own test metrics. The output is `<run>/evaluate_data/<name>/` (metrics.json,
report.md, report.html, plots): outside `evaluate/`, whose manifest lists its files and which a
re-run of the evaluate stage replaces whole. Nothing under the run's stage folders is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import yaml

from modelworks.artifacts import atomic_write_json
from modelworks.collect.source import Source
from modelworks.config import Config, parse_source
from modelworks.errors import ConfigError, EvaluateError, ModelworksError
from modelworks.lifecycle import load_run  # noqa: F401  (public here too)
from modelworks.progress import Reporter


def data_source(cfg: Config, values: list[str]) -> Source:
    """`--data` values as one source: `{...}` YAML is a whole source, else paths for a copy of
    the run's first source."""
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            return parse_source(yaml.safe_load(values[0]))
        except Exception as e:  # yaml or pydantic: one line naming the value
            first = str(e).splitlines()[0]
            raise ConfigError(f"--data {values[0]!r}: not a collect source ({first})") from None
    with_paths = [s for s in cfg.collect.sources if getattr(s, "paths", None)]
    if not with_paths:
        kinds = ", ".join(s.type for s in cfg.collect.sources)
        raise ConfigError(
            f"--data {' '.join(values)}: the run's sources ({kinds}) read no files to copy; give a "
            "whole source, e.g. --data '{type: files, paths: [a.txt]}'"
        )
    base = with_paths[0].model_dump()
    base.update(paths=list(values), split=None, limit=None)
    for key, empty in (("split_field", ""), ("dataset", "")):  # the types that have them
        if key in base:
            base[key] = empty
    return parse_source(base)


def default_name(src: Source) -> str:
    paths = getattr(src, "paths", None)
    first = Path(paths[0]).name if paths else getattr(src, "dataset", "") or src.type
    stem = re.sub(r"(\.gz)?$", "", first).split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "data"


def score_data(
    run_dir: str | Path,
    src: Source,
    name: str | None = None,
    reporter: Reporter | None = None,
    overrides: dict | None = None,
) -> Path:
    """Collect `src`, prepare it as the run's test split, score the run's model on it; returns
    `<run>/evaluate_data/<name>/`."""
    from modelworks.collect import collect
    from modelworks.evaluate.checkpoint import choose_checkpoint, scored
    from modelworks.evaluate.report import config_section, write_report
    from modelworks.lifecycle import model_stage
    from modelworks.runtime import setup
    from modelworks.tasks import get_task

    reporter = reporter or Reporter()
    run = load_run(run_dir)
    run_dir = run.run_dir
    weights = run_dir / model_stage(run) / "model.safetensors"
    if not weights.is_file():
        raise EvaluateError(f"{weights.parent}: no checkpoint (model.safetensors); train it first")
    task = get_task(run.task)
    if task.test_data is None:
        raise EvaluateError(
            f"evaluate --data: task {run.task!r} cannot score new data yet (its Task has no "
            "test_data; tasks/base.py)"
        )
    cfg = run.model_copy(deep=True)
    for k, v in (overrides or {}).items():
        try:
            setattr(cfg.evaluate, k, v)
        except (ValueError, AttributeError) as e:  # pydantic's ValidationError is a ValueError
            first = str(e).splitlines()[-1].strip() if str(e) else type(e).__name__
            raise ConfigError(f"evaluate.{k}={v!r}: {first}") from None
    ckpt = choose_checkpoint(cfg)  # in the run itself (its paths are the ones reported); first
    name = name or default_name(src)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ConfigError(f"--data-name {name!r}: use letters, digits, '-', '_' and '.'")
    root = run_dir / "evaluate_data"
    work = root / f".{name}.work"
    out = root / f".{name}.partial"
    for d in (work, out):
        shutil.rmtree(d, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        shadow = work / run.name  # a scratch run: the new data as its collection
        scratch = run.model_copy(deep=True)
        scratch.runs_dir, scratch.collect.sources = str(work), [src]
        try:
            collect(scratch, reporter)
        except ModelworksError as e:  # the source's own error, said of --data
            what = ", ".join(getattr(src, "paths", [])) or getattr(src, "dataset", "")
            where = f"--data ({src.type}: {what})"
            raise EvaluateError(f"{where}: {e}") from None
        kind = task.test_data.collection
        if not (shadow / "collect" / f"{kind}.parquet").is_file():
            raise EvaluateError(
                f"--data collect.sources.0 (type {src.type}): gives no {kind} for run "
                f"{run_dir} (task {run.task}); it needs {task.test_data.needs}"
            )
        stage = model_stage(run)
        os.symlink((run_dir / stage).resolve(), shadow / stage, target_is_directory=True)
        unknown = _prepare(run, run_dir, shadow, task)
        cfg.runs_dir, cfg.evaluate.split = str(work), "test"
        setup(run.threads, run.seed)
        metrics, sections, images = task.evaluate(cfg, shadow, out, reporter, ckpt=ckpt)
        metrics, opening = scored(run, metrics, ckpt)  # the run's own config hash
        metrics = {
            "data": src.model_dump(mode="json", exclude_defaults=True),
            "run": str(run_dir),
            "unknown_labels": unknown,
            **metrics,
        }
        atomic_write_json(out / "metrics.json", metrics)
        lines = [f"- source: `{json.dumps(metrics['data'])}`", f"- run: `{run_dir}`"]
        if unknown["rows"]:
            named = ", ".join(f"{k!r} ({n})" for k, n in unknown["labels"].items())
            lines.append(
                f"- left out: {unknown['rows']} row(s) with labels the run never saw: {named}"
            )
        sections = [("Data", "\n".join(lines)), *sections]
        sections.append(("Run config", config_section(run.model_dump(mode="json"))))
        title = f"modelworks evaluate --data: {name} on {run.name}"
        write_report(out, title, sections, images, opening)
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
        if run.track != "none":
            from modelworks.train.tracking import track_data

            track_data(run, name, final)
        reporter.info(f"[evaluate] {name}: report at {final / 'report.html'}")
        return final
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prepare(run: Config, run_dir: Path, shadow: Path, task) -> dict:
    """The scratch run's preprocess/: the run's own files, with `test` made of the new data by
    the task (`Task.test_data.prepare`)."""
    pre, own = shadow / "preprocess", run_dir / "preprocess"
    pre.mkdir()
    for f in own.iterdir():  # read-only links; the test split is written fresh by the task
        if f.is_file() and not f.name.startswith("test."):
            os.symlink(f.resolve(), pre / f.name)
    return task.test_data.prepare(run, run_dir, shadow, pre)
