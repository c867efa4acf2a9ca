"""`modelworks compare` across tasks: only what each run ran and set, in config-file spelling."""

import json

from modelworks.cli import main
from modelworks.config import dump_config, load_config
from modelworks.evaluate.compare import compare


def _run(root, name: str, stages: tuple[str, ...], overrides: list[str], metrics: dict):
    """A run folder as the pipeline leaves it: the resolved config.yaml, a manifest per stage
    that ran, evaluate/metrics.json."""
    cfg = load_config(None, [f"runs_dir={root}", f"name={name}", *overrides])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(dump_config(cfg))
    for stage in stages:
        (cfg.run_dir / stage).mkdir()
        (cfg.run_dir / stage / "manifest.json").write_text(json.dumps({"stage": stage}))
    (cfg.run_dir / "evaluate" / "metrics.json").write_text(json.dumps(metrics))
    return cfg.run_dir


def test_compare_across_tasks_shows_what_each_run_ran_and_set(tmp_path, capsys):
    lm = _run(tmp_path, "lm", ("collect", "preprocess", "pretrain", "evaluate"),
              ["pretrain.steps=50", "pretrain.warmup_steps=5", "model.n_layer=2"],
              {"loss": 3.2})  # fmt: skip
    clf = _run(tmp_path, "clf", ("collect", "preprocess", "finetune", "evaluate"),
               ["task=text_classification", "finetune.from=minilm", "finetune.steps=30",
                "collect.sources.0.type=table", "serve.port=9000"],
               {"accuracy": 0.9})  # fmt: skip
    result = compare([lm, clf])
    rows = result["config"]
    assert rows["task"] == ["language_modeling", "text_classification"]
    assert rows["finetune.from"] == [None, "minilm"] and "finetune.from_" not in rows
    assert rows["finetune.steps"] == [None, 30]
    assert rows["pretrain.steps"] == [50, None] and rows["model.n_layer"] == [2, None]
    assert rows["collect.sources.0.type"] == ["python_docs", "table"]
    # neither the defaults of a stage a run never ran, nor where runs live and are served
    assert not any(k.startswith(("serve.", "finetune.lora", "pretrain.lr")) for k in rows)
    assert not {"name", "runs_dir", "pretrain.batch_size", "finetune.method"} & set(rows)
    assert len(rows) < 12, sorted(rows)
    assert result["stages"][1] == ["collect", "evaluate", "finetune", "preprocess"]
    assert main(["compare", str(lm), str(clf)]) == 0
    out = capsys.readouterr().out
    assert "| finetune.from | — | minilm |" in out and "from_" not in out
