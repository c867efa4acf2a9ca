"""Experiment tracking: a tiny run logs into a local MLflow store, read back with MLflow's own
client (the real component); W&B offline writes its run folder."""

import json

import pytest

from modelworks.evaluate.score import data_source, load_run, score_data
from modelworks.pipeline import run
from tests.collect.test_splits import fashion_like, idx_config
from tests.evaluate.test_score_data import TINY, checksums

mlflow = pytest.importorskip("mlflow")


def test_mlflow_params_metrics_per_step_and_artifacts(tmp_path):
    from mlflow.tracking import MlflowClient

    fashion_like(tmp_path / "data")
    cfg = idx_config(tmp_path, tmp_path / "data", *TINY, "track=mlflow")
    run(cfg)
    state = json.loads((cfg.run_dir / "tracking.json").read_text())
    assert state["uri"] == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=state["uri"])
    got = client.get_run(state["run_id"])
    assert got.info.run_name == cfg.name and got.info.status == "FINISHED"
    params = got.data.params
    assert params["pretrain.lr"] == "0.001" and params["model.hidden"] == "16"
    assert params["collect.sources"].startswith('[{"type": "idx"')
    # one loss value per logged training step, as in metrics.jsonl
    logged = [
        json.loads(line)["step"]
        for line in (cfg.run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    history = client.get_metric_history(state["run_id"], "pretrain/loss")
    assert sorted(m.step for m in history) == logged == [5, 10, 15, 20]
    assert {m.step for m in client.get_metric_history(state["run_id"], "pretrain/val_loss")} == {
        10,
        20,
    }
    evaluate = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    acc = client.get_metric_history(state["run_id"], "evaluate/accuracy")
    assert [m.value for m in acc] == [evaluate["accuracy"]]
    # artifacts: in the store, the same bytes as the run's files
    root = client.download_artifacts(state["run_id"], "", str(tmp_path / "dl"))
    for rel in ("collect/manifest.json", "preprocess/stats.json", "pretrain/manifest.json",
                "pretrain/model/model.safetensors", "evaluate/report.md",
                "evaluate/report.html"):  # fmt: skip
        assert (tmp_path / "dl" / rel).read_bytes() == (
            cfg.run_dir / rel.replace("model/", "")
        ).read_bytes(), rel
    assert root
    # scoring new data logs into the same tracker run and leaves the run's files as they were
    before = checksums(cfg.run_dir)
    t10k = [
        str(tmp_path / "data" / f"t10k-{k}-idx{n}-ubyte.gz")
        for k, n in (("images", 3), ("labels", 1))
    ]
    score_data(cfg.run_dir, data_source(load_run(cfg.run_dir), t10k), name="t10k")
    scored = client.get_metric_history(state["run_id"], "evaluate_data.t10k/accuracy")
    assert [m.value for m in scored] == [evaluate["accuracy"]]
    assert checksums(cfg.run_dir) == before
    # a later command with a changed knob: MLflow params are write-once, the change is a tag
    cfg.evaluate.bootstrap = 100
    from modelworks.evaluate import evaluate as evaluate_stage

    evaluate_stage(cfg)
    got = client.get_run(state["run_id"]).data
    assert (
        got.params["evaluate.bootstrap"] == "200"
        and got.tags["changed.evaluate.bootstrap"] == "100"
    )


@pytest.mark.slow
def test_wandb_offline_writes_its_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    fashion_like(tmp_path / "data")
    cfg = idx_config(tmp_path, tmp_path / "data", *TINY, "track=wandb")
    run(cfg)
    state = json.loads((cfg.run_dir / "tracking.json").read_text())
    assert state["service"] == "wandb"
    files = {p.name for p in (cfg.run_dir / "wandb").rglob("*") if p.is_file()}
    assert "model.safetensors" in files and "report.md" in files
    assert any(name.endswith(".wandb") for name in files)
