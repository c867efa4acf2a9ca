"""Manifests, skip/force logic and atomic stage folders, on a tiny real run."""

import json

import pytest

from modelworks.artifacts import atomic_write_text, read_manifest, sha256_file
from modelworks.config import load_config
from modelworks.pipeline import run
from modelworks.preprocess import preprocess
from modelworks.preprocess.tokenizer import TokenizerError


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    from tests.conftest import tiny_overrides

    runs = tmp_path_factory.mktemp("pipeline") / "runs"
    cfg = load_config(None, tiny_overrides(runs))
    first = run(cfg)
    return cfg, first


def test_first_run_runs_every_stage_and_writes_manifests(done_run):
    cfg, first = done_run
    assert first == dict.fromkeys(["collect", "preprocess", "pretrain", "evaluate"], "ran")
    for stage in first:
        m = read_manifest(cfg.run_dir / stage)
        assert m["status"] == "complete" and m["stage"] == stage
        assert {
            "config",
            "config_hash",
            "inputs",
            "outputs",
            "versions",
            "started",
            "ended",
        } <= set(m)
        for out in m["outputs"]:
            p = cfg.run_dir / stage / out["path"]
            assert sha256_file(p) == out["sha256"] and p.stat().st_size == out["bytes"]
    assert read_manifest(cfg.run_dir / "evaluate")["inputs"][1]["stage"] == "pretrain"
    assert not list(cfg.run_dir.glob("*.partial"))


def test_second_run_skips_everything(done_run):
    cfg, _ = done_run
    assert set(run(cfg).values()) == {"skipped"}


def test_changed_config_reruns_only_affected_stages(done_run):
    cfg, _ = done_run
    changed = cfg.model_copy(deep=True)
    changed.evaluate.max_new_tokens = 4
    assert run(changed) == {
        "collect": "skipped",
        "preprocess": "skipped",
        "pretrain": "skipped",
        "evaluate": "ran",
    }
    # and going back re-runs evaluate again, nothing else
    assert run(cfg)["evaluate"] == "ran"


def test_force_reruns_a_stage_and_deterministic_outputs_stop_the_cascade(done_run):
    cfg, _ = done_run
    before = read_manifest(cfg.run_dir / "preprocess")
    result = run(cfg, force=["preprocess"])
    after = read_manifest(cfg.run_dir / "preprocess")
    assert result["preprocess"] == "ran" and after["ended"] >= before["ended"]
    assert after["digest"] == before["digest"]  # same inputs, same config: same bytes
    assert result["pretrain"] == "skipped"


def test_failed_stage_leaves_previous_artifact_intact(done_run):
    cfg, _ = done_run
    before = read_manifest(cfg.run_dir / "preprocess")
    bad = cfg.model_copy(deep=True)
    bad.preprocess.vocab_size = 60000
    with pytest.raises(TokenizerError, match="larger than the corpus supports"):
        preprocess(bad)
    assert read_manifest(cfg.run_dir / "preprocess") == before
    assert not (cfg.run_dir / "preprocess.partial").exists()


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_text(p, json.dumps({"a": 1}))
    atomic_write_text(p, json.dumps({"a": 2}))
    assert json.loads(p.read_text()) == {"a": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]


def test_evaluate_writes_metrics_report_and_generations(done_run):
    cfg, _ = done_run
    ev = cfg.run_dir / "evaluate"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["tokens"] > 0 and metrics["unigram_perplexity"] > 1
    html = (ev / "report.html").read_text()
    assert "data:image/png;base64," in html and "unigram baseline perplexity" in html
    assert (ev / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gens = json.loads((ev / "generations.json").read_text())
    assert len(gens) == len(cfg.evaluate.prompts)
