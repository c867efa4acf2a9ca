"""Which checkpoint evaluate scores (evaluate/checkpoint.py: the best validation one where
training kept one, else the final; `--checkpoint` overrides) and the report's and metrics.json's
account of what was scored, on tiny real runs."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from modelworks import load_config
from modelworks.evaluate import evaluate
from modelworks.evaluate.checkpoint import choose_checkpoint, run_config_hash
from modelworks.evaluate.report import EvaluateError
from modelworks.pipeline import run
from tests.conftest import cli, tiny_overrides
from tests.finetune.test_finetune import overrides, write_reviews

FAST = {"evaluate.bootstrap": 0, "tasks.text_classification.explain_samples": 0,
        "pretrain.eval_every": 10, "pretrain.ckpt_every": 10}  # fmt: skip


@pytest.fixture(scope="module")
def tc_run(tmp_path_factory):
    """A tiny text classifier validated every 10 of 30 steps, with a test split; one row of its
    data has no label (1 of 161 rows: under the default max_bad_rows, skipped and counted)."""
    tmp = tmp_path_factory.mktemp("eval_ckpt")
    data = write_reviews(tmp / "reviews.csv", n=160)
    with open(data, "a") as f:
        f.write("a review nobody labelled,\n")
    cfg = load_config(None, overrides(tmp, "tc", data, **FAST))
    run(cfg)
    return tmp, data, cfg


def _copy(tc_run, name: str, **extra):
    """The trained run copied under `name` (its evaluate/ removed), and its config."""
    tmp, data, cfg = tc_run
    shutil.copytree(cfg.run_dir, cfg.run_dir.parent / name)
    shutil.rmtree(cfg.run_dir.parent / name / "evaluate")
    return load_config(None, overrides(tmp, name, data, **{**FAST, **extra}))


def _metrics(cfg) -> dict:
    return json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())


def test_evaluate_scores_the_best_checkpoint_and_says_so(tc_run):
    # make best/ hold other weights than the final model (step 20's), so that the numbers show
    # which weights were scored
    cfg = _copy(tc_run, "best_differs")
    pre = cfg.run_dir / "pretrain"
    shutil.copy(pre / "checkpoints" / "step_000020" / "model.safetensors", pre / "best")
    best = json.loads((pre / "best" / "best.json").read_text())
    evaluate(cfg)
    m = _metrics(cfg)
    assert list(m)[:4] == ["split", "rows", "checkpoint", "config_hash"]
    assert m["split"] == "test" and m["rows"] == m["examples"] == 32
    assert m["checkpoint"]["name"] == "best" and m["checkpoint"]["step"] == best["step"]
    assert m["checkpoint"]["metric"] == "val_accuracy"
    assert m["checkpoint"]["value"] == best["val_accuracy"]
    assert m["config_hash"] == run_config_hash(cfg) and "warnings" not in m
    md = (cfg.run_dir / "evaluate" / "report.md").read_text().splitlines()
    assert md[0] == "# modelworks report: best_differs (text_classification)"
    assert md[1:4] == [
        "- split: test (32 rows)",
        f"- checkpoint: best (step {best['step']}, val_accuracy {best['val_accuracy']:.4f})",
        f"- config hash: {run_config_hash(cfg)}",
    ]
    html = (cfg.run_dir / "evaluate" / "report.html").read_text()
    assert "<li>split: test (32 rows)</li>" in html
    # the row collect skipped is in the report, with its file and line
    skipped = md[md.index("## Data: rows skipped by collect") :]
    assert skipped[2] == "1 of 161 rows were skipped when the data was collected."
    assert skipped[6].startswith("| collect.sources.0 | missing label | 1 | ")
    assert "reviews.csv:162 (column 'sentiment' is empty) |" in skipped[6]

    same = _copy(tc_run, "step20", **{"evaluate.checkpoint": "step_000020"})
    evaluate(same)
    final = _copy(tc_run, "final", **{"evaluate.checkpoint": "final"})
    evaluate(final)
    by_step, by_final = _metrics(same), _metrics(final)
    assert m["loss"] == pytest.approx(by_step["loss"], abs=1e-6)  # the weights best/ holds
    assert by_step["checkpoint"]["step"] == 20 and by_final["checkpoint"]["step"] == 30
    assert by_final["checkpoint"]["name"] == "final" and by_final["loss"] != m["loss"]
    logged = [json.loads(x) for x in (pre / "metrics.jsonl").read_text().splitlines()]
    val30 = next(r["val_accuracy"] for r in logged if r["step"] == 30 and "val_accuracy" in r)
    assert by_final["checkpoint"]["value"] == val30


def test_without_a_test_split_the_report_opens_with_a_warning(tc_run):
    cfg = _copy(tc_run, "notest")
    test = pd.read_parquet(cfg.run_dir / "preprocess" / "test.parquet")
    test.iloc[:0].to_parquet(cfg.run_dir / "preprocess" / "test.parquet", index=False)
    evaluate(cfg)
    m = _metrics(cfg)
    val_rows = len(pd.read_parquet(cfg.run_dir / "preprocess" / "val.parquet"))
    assert m["split"] == "val" and m["rows"] == val_rows
    assert len(m["warnings"]) == 1 and "no test split" in m["warnings"][0]
    md = (cfg.run_dir / "evaluate" / "report.md").read_text().splitlines()
    assert md[1].startswith("**Warning: this run has no test split, so these numbers are on the")
    assert "chose this checkpoint" in md[1]  # best/ was chosen on that very split
    assert md[2] == f"- split: val ({val_rows} rows)"
    # asking for val is a choice, not a fallback: no warning
    asked = _copy(tc_run, "asked_val", **{"evaluate.split": "val"})
    evaluate(asked)
    assert "warnings" not in _metrics(asked)
    assert (
        (asked.run_dir / "evaluate" / "report.md")
        .read_text()
        .splitlines()[1]
        .startswith("- split: val")
    )


def test_a_checkpoint_that_does_not_exist_is_one_line_naming_those_that_do(tc_run, tmp_path):
    tmp, data, cfg = tc_run
    with pytest.raises(EvaluateError) as e:
        choose_checkpoint(cfg, "step_000999")
    assert str(e.value) == (
        f"--checkpoint 'step_000999': {cfg.run_dir / 'pretrain'} has no such checkpoint; it has: "
        "final, best, step_000020, step_000030"
    )
    config = tmp_path / "tc.yaml"  # not configs/quickstart.yaml (a gpt model) by default
    config.write_text("task: text_classification\n")
    args = overrides(tmp, "tc", data, **FAST)
    proc = cli("evaluate", str(config), *args, "--checkpoint", "nope", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--checkpoint 'nope'" in lines[0], proc.stderr
    assert lines[0].endswith("it has: final, best, step_000020, step_000030")


def test_language_model_evaluate_scores_best_and_warns_about_val(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "runs", "lm") + ["evaluate.prompts=[]"])
    run(cfg)
    m = _metrics(cfg)
    best = json.loads((cfg.run_dir / "pretrain" / "best" / "best.json").read_text())
    assert m["checkpoint"]["name"] == "best" and m["checkpoint"]["step"] == best["step"]
    assert m["checkpoint"]["value"] == best["val_loss"] and m["rows"] == m["documents"] > 0
    assert m["split"] == "val" and "no test split" in m["warnings"][0]
    md = (cfg.run_dir / "evaluate" / "report.md").read_text().splitlines()
    assert md[1].startswith("**Warning: this run has no test split")
    assert md[3].startswith(f"- checkpoint: best (step {best['step']}, val_loss ")


def _image(tmp):
    from tests.conftest import ROOT

    overrides = [f"runs_dir={tmp / 'runs'}", "pretrain.steps=60", "pretrain.eval_every=20"]
    cfg = load_config(ROOT / "configs" / "mlp.yaml", overrides)
    run(cfg)
    return cfg


def _recommendation(tmp):
    from tests.conftest import ROOT
    from tests.tasks.test_recsys import SMALL

    small = [*SMALL, "pretrain.steps=40", "pretrain.eval_every=20", "pretrain.ckpt_every=20"]
    cfg = load_config(ROOT / "configs" / "recsys.yaml", [f"runs_dir={tmp / 'runs'}", *small])
    run(cfg)
    return cfg


def _translation(tmp):
    from tests.tasks.test_translation import _numbers_cfg

    cfg = _numbers_cfg(tmp, "numbers", 4, 8, 12, 32)
    cfg.finetune.eval_every = 4
    run(cfg)
    return cfg


def _chat(tmp):
    from tests.tasks.test_chat import _chat_run

    run_dir = _chat_run(tmp, steps=8)
    return load_config(run_dir / "config.yaml")


@pytest.mark.parametrize("build", [_image, _recommendation, _translation, _chat])
def test_every_task_scores_its_best_checkpoint_by_default(build, tmp_path):
    cfg = build(tmp_path)
    stage = "finetune" if cfg.finetune is not None else "pretrain"
    best = json.loads((cfg.run_dir / stage / "best" / "best.json").read_text())
    m = _metrics(cfg)
    train_cfg = cfg.finetune if cfg.finetune is not None else cfg.pretrain
    assert m["checkpoint"]["name"] == "best" and m["checkpoint"]["step"] == best["step"]
    assert m["checkpoint"]["value"] == best[train_cfg.best_metric]
    assert m["checkpoint"]["folder"] == str(cfg.run_dir / stage / "best")
    assert m["rows"] > 0 and m["config_hash"] == run_config_hash(cfg)
    md = (cfg.run_dir / "evaluate" / "report.md").read_text().splitlines()
    opening = md[2:5] if md[1].startswith("**Warning") else md[1:4]
    assert opening[0] == f"- split: {m['split']} ({m['rows']:,} rows)"
    assert opening[1].startswith(f"- checkpoint: best (step {best['step']}, ")
    assert (m["split"] == "test") == ("warnings" not in m)
