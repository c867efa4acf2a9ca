"""Text-classification evaluate reports: bootstrap intervals for accuracy and macro-F1, and the
sample predictions with their integrated-gradients tokens, on a tiny encoder run."""

import json
import re
import shutil

import pandas as pd
import pytest

from modelworks import load_config
from modelworks.evaluate import evaluate
from modelworks.pipeline import run
from tests.finetune.test_finetune import overrides, write_reviews


@pytest.fixture(scope="module")
def tc_run(tmp_path_factory):
    """The tiny encoder of test_finetune, trained from scratch on generated reviews."""
    tmp = tmp_path_factory.mktemp("eval_reports")
    data = write_reviews(tmp / "reviews.csv")
    extra = {
        "evaluate.bootstrap": 300,
        "tasks.text_classification.explain_samples": 4,
        "tasks.text_classification.ig_steps": 8,
    }
    cfg = load_config(None, overrides(tmp, "tc", data, **extra))
    run(cfg)
    return tmp, data, cfg


def _evaluate_with_test_split(tc_run, name: str, frame: pd.DataFrame) -> dict:
    """The trained run copied under `name`, its test split replaced by `frame`, evaluated."""
    tmp, data, cfg = tc_run
    run_dir = cfg.run_dir.parent / name
    shutil.copytree(cfg.run_dir, run_dir)
    shutil.rmtree(run_dir / "evaluate")
    frame.to_parquet(run_dir / "preprocess" / "test.parquet", index=False)
    extra = {
        "evaluate.bootstrap": 300,
        "tasks.text_classification.explain_samples": 4,
        "tasks.text_classification.ig_steps": 8,
    }
    evaluate(load_config(None, overrides(tmp, name, data, **extra)))
    return json.loads((run_dir / "evaluate" / "metrics.json").read_text())


def test_metrics_and_report_carry_intervals(tc_run):
    out = tc_run[2].run_dir / "evaluate"
    m = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi, key
        # the table shows the value with its interval, as fmt_ci writes it
        assert f"{m[key]:.4f} [{lo:.4f}, {hi:.4f}]" in (out / "report.md").read_text()
    assert m["ci_level"] == 0.95
    assert m["accuracy"] > m["majority_baseline_accuracy"] + 0.2  # the model learnt something


def test_intervals_shrink_with_more_test_data(tc_run):
    """The same predictions four times over: same accuracy, about half the interval."""
    test = pd.read_parquet(tc_run[2].run_dir / "preprocess" / "test.parquet")
    noisy = test.copy()
    noisy.loc[::3, "label"] = 1 - noisy.loc[::3, "label"]  # wrong labels: accuracy well below 1
    one = _evaluate_with_test_split(tc_run, "x1", noisy)
    four = _evaluate_with_test_split(tc_run, "x4", pd.concat([noisy] * 4, ignore_index=True))
    assert four["examples"] == 4 * one["examples"]
    assert 0.3 < one["accuracy"] < 0.9
    assert four["accuracy"] == pytest.approx(one["accuracy"])
    for key in ("accuracy_ci", "macro_f1_ci"):
        w1, w4 = one[key][1] - one[key][0], four[key][1] - four[key][0]
        assert 0 < w4 < 0.7 * w1, (key, w1, w4)
    # wrong predictions exist here, so the samples mix both kinds, wrong ones first
    samples = json.loads(
        (tc_run[2].run_dir.parent / "x1" / "evaluate" / "samples.json").read_text()
    )
    kinds = [s["label"] == s["predicted"] for s in samples]
    assert len(samples) == 4 and not kinds[0] and kinds[-1], kinds


def test_attribution_section_lists_tokens_of_the_sample_texts(tc_run):
    out = tc_run[2].run_dir / "evaluate"
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples) == 4
    test = pd.read_parquet(tc_run[2].run_dir / "preprocess" / "test.parquet")
    md = (out / "report.md").read_text()
    section = md[md.index("## Sample predictions and attributions") :]
    rows = [r for r in section.splitlines() if r.startswith("| ") and "---" not in r][1:5]
    assert len(rows) == 4
    for s, row in zip(samples, rows, strict=True):
        assert test["text"][s["index"]] == s["text"]
        assert len(s["attributions"]) == len(s["tokens"])
        top = [t["token"] for t in s["top_tokens"][:3]]
        # the top tokens are pieces of that text, and its row names them
        assert all(t and t in s["text"] for t in top), (top, s["text"])
        assert re.findall(r"`([^`]+)`", row) == [t.strip() or repr(t) for t in top], row
        # the most attributed token comes first
        best = max(range(len(s["tokens"])), key=lambda i: s["attributions"][i])
        assert s["tokens"][best] == top[0]
    assert (out / "token_heat.png").stat().st_size > 3000
    html = (out / "report.html").read_text()
    assert "Sample predictions and attributions" in html and "data:image/png;base64" in html
