"""The Task contract (tasks/base.py): every registered task declares one, and a task written
outside modelworks (tests/example_task.py) runs collect -> serve from a config alone."""

from __future__ import annotations

import json

import httpx
import pytest

from modelworks.config import load_config
from modelworks.errors import ConfigError
from modelworks.pipeline import run
from modelworks.tasks import TASKS, get_task
from modelworks.tasks.base import Task
from tests.conftest import served


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_declares_the_contract(name):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name
    assert all(callable(h) for h in (task.prepare, task.setup_training, task.evaluate))
    assert task.can_serve  # every built-in task, language modelling included, has endpoints


def test_the_contract_refuses_what_is_not_a_task():
    with pytest.raises(ConfigError, match="setup_training must be a function"):
        Task(name="broken", prepare=print, setup_training=None, evaluate=print)
    with pytest.raises(ConfigError, match="'nope' is not a known task; known: chat, "):
        get_task("nope")
    with pytest.raises(ConfigError, match="no module 'tests.no_such_task'"):
        get_task("tests.no_such_task")
    with pytest.raises(ConfigError, match="tests.conftest defines no TASK"):
        get_task("tests.conftest")
    with pytest.raises(ConfigError, match="cannot be fine-tuned"):
        from modelworks.finetune import finetune

        finetune(load_config(None, ["task=recommendation", "finetune.from=pretrain"]))


def test_a_task_from_outside_modelworks_runs_from_collect_to_serve(tmp_path):
    cfg = load_config(
        None,
        [
            f"runs_dir={tmp_path / 'runs'}", "name=doc_length", "task=tests.example_task",
            "threads=1", "collect.sources.0.limit=400", "model.name=mlp", "model.hidden=16",
            "pretrain.steps=150", "pretrain.batch_size=32", "pretrain.lr=0.01",
            "pretrain.warmup_steps=5", "pretrain.eval_every=50", "pretrain.ckpt_every=50",
            "tasks.doc_length.quantile=0.5",  # its own section, under the Task's name
        ],
    )  # fmt: skip
    assert run(cfg) == {s: "ran" for s in ("collect", "preprocess", "pretrain", "evaluate")}
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["rows"] > 30
    assert metrics["accuracy"] >= metrics["majority"] + 0.2, metrics  # held out, learned
    assert "Results (test split)" in (cfg.run_dir / "evaluate" / "report.md").read_text()
    with served(cfg.run_dir) as (base, _):
        long_doc = "\n".join(["A line of reasonably long documentation text."] * 80)
        r = httpx.post(f"{base}/v1/doc_length", json={"input": long_doc}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["label"] == "long" and r.json()["model"] == "doc_length"
        r = httpx.post(f"{base}/v1/doc_length", json={"input": "x"}, timeout=30)
        assert r.json()["label"] == "short"
        r = httpx.post(f"{base}/v1/doc_length", json={"input": 3}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        r = httpx.post(f"{base}/v1/doc_length", json={"input": "x", "model": "other"}, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]] == ["doc_length"]
    # a task without test_data: `evaluate --data` says so in one line, and writes nothing
    from modelworks.config import parse_source
    from modelworks.errors import EvaluateError
    from modelworks.evaluate.score import score_data

    with pytest.raises(EvaluateError, match="cannot score new data yet"):
        score_data(cfg.run_dir, parse_source({"type": "python_docs", "limit": 5}))
    assert not (cfg.run_dir / "evaluate_data").exists()
