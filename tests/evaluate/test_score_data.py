"""`evaluate RUN --data SOURCE...`: a finished run scored on new data, its artifacts untouched."""

import hashlib
import json

import numpy as np
import pytest

from modelworks.cli import main
from modelworks.errors import EvaluateError
from modelworks.evaluate.score import data_source, load_run, score_data
from modelworks.pipeline import run
from tests.collect.test_splits import fashion_like, idx_config, write_idx

TINY = ["pretrain.steps=20", "pretrain.eval_every=10", "pretrain.ckpt_every=10",
        "pretrain.log_every=5", "evaluate.bootstrap=200", "model.hidden=16",
        "threads=1"]  # fmt: skip


def checksums(run_dir):
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and "evaluate_data" not in p.parts
    }


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score")
    fashion_like(tmp / "data")
    cfg = idx_config(tmp, tmp / "data", *TINY)
    run(cfg)
    return cfg, tmp / "data"


def test_own_test_split_gives_the_runs_own_metrics(image_run):
    cfg, data = image_run
    before = checksums(cfg.run_dir)
    t10k = [str(data / "t10k-images-idx3-ubyte.gz"), str(data / "t10k-labels-idx1-ubyte.gz")]
    code = main(["evaluate", str(cfg.run_dir), "--data", *t10k])
    assert code == 0
    out = cfg.run_dir / "evaluate_data" / "t10k-images-idx3-ubyte"
    got = json.loads((out / "metrics.json").read_text())
    own = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert own["split"] == got["split"] == "test" and got["examples"] == 30
    for key in ("accuracy", "macro_f1", "loss", "accuracy_ci", "confusion_matrix", "rows",
                "checkpoint", "config_hash"):  # fmt: skip
        assert got[key] == own[key], key
    assert got["unknown_labels"] == {"rows": 0, "labels": {}, "unreadable": 0}
    assert (out / "report.md").read_text().startswith("# modelworks evaluate --data: t10k")
    assert (out / "report.html").is_file()
    assert checksums(cfg.run_dir) == before  # the run's manifests and files are untouched
    assert not list((cfg.run_dir / "evaluate_data").glob(".*"))  # no scratch left behind


def test_unknown_labels_are_counted_and_named(image_run, tmp_path):
    cfg, data = image_run
    labels = np.array([1, 2, 42, 42, 3, 99])
    images = np.zeros((6, 28, 28), np.uint8)
    write_idx(tmp_path / "img.gz", images)
    write_idx(tmp_path / "lbl.gz", labels)
    src = data_source(load_run(cfg.run_dir), [str(tmp_path / "img.gz"), str(tmp_path / "lbl.gz")])
    out = score_data(cfg.run_dir, src, name="odd")
    got = json.loads((out / "metrics.json").read_text())
    assert got["unknown_labels"] == {"rows": 3, "labels": {"42": 2, "99": 1}, "unreadable": 0}
    assert got["examples"] == 3
    assert "'42' (2), '99' (1)" in (out / "report.md").read_text()


def test_data_whose_columns_do_not_fit_the_task(image_run, tmp_path):
    cfg, _ = image_run
    (tmp_path / "t.csv").write_text("text,label\nhello,1\n")
    src = data_source(load_run(cfg.run_dir), [f"{{type: table, paths: ['{tmp_path / 't.csv'}']}}"])
    with pytest.raises(EvaluateError) as e:
        score_data(cfg.run_dir, src)
    assert str(e.value) == (
        f"--data collect.sources.0 (type table): gives no images for run {cfg.run_dir} "
        "(task image_classification); it needs an image source (idx, image_folder, "
        "image_table, npz)"
    )
    (tmp_path / "u.csv").write_text("sentence,label\nhello,1\n")
    src = data_source(load_run(cfg.run_dir), [f"{{type: table, paths: ['{tmp_path / 'u.csv'}']}}"])
    msg = r"^--data \(table: .*u.csv\): .*no column 'text' .*the file has: sentence, label$"
    with pytest.raises(EvaluateError, match=msg):
        score_data(cfg.run_dir, src)


def test_report_states_the_splits_and_runs_lists_the_run(image_run, capsys):
    cfg, data = image_run
    report = (cfg.run_dir / "evaluate" / "report.md").read_text()
    t10k = data / "t10k-images-idx3-ubyte.gz"
    assert f"- test: 30 rows (30 from {t10k} (split: test))" in report
    assert main(["runs", str(cfg.run_dir.parent)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(f"| {cfg.name} "))
    own = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:4] == [
        cfg.name,
        "image_classification",
        "collect, preprocess, pretrain, evaluate",
        f"accuracy {own['accuracy']:.4g}",
    ]


def test_language_model_scored_on_its_own_test_file(tmp_path):
    import sysconfig
    from pathlib import Path

    from modelworks.config import load_config
    from tests.conftest import tiny_overrides

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    held = tmp_path / "held"
    held.mkdir()
    for name in ("heapq", "bisect", "textwrap"):  # whole modules as documents, named test
        (held / f"{name}.txt").write_text((stdlib / f"{name}.py").read_text())
    sources = [{"type": "python_docs", "limit": 120}, {"type": "files", "split": "test",
               "paths": [str(held / "*.txt")]}]  # fmt: skip
    cfg = load_config(
        None,
        [
            *tiny_overrides(tmp_path / "runs"),
            f"collect.sources={json.dumps(sources)}",
            "evaluate.bootstrap=100",
            "evaluate.prompts=['def ']",
        ],  # fmt: skip
    )
    run(cfg)
    before = checksums(cfg.run_dir)
    own = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert own["split"] == "test"
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    assert stats["splits"]["test"] == {"rows": 3, "from": {f"{held / n}.txt (split: test)": 1
                                       for n in ("bisect", "heapq", "textwrap")}}  # fmt: skip
    assert stats["test_overlap"]["test_rows"] == 3
    src = data_source(load_run(cfg.run_dir), [str(held / "*.txt")])
    out = score_data(cfg.run_dir, src, name="held")
    got = json.loads((out / "metrics.json").read_text())
    for key in ("split", "loss", "perplexity", "bits_per_byte", "unigram_loss"):
        assert got[key] == own[key], key
    assert checksums(cfg.run_dir) == before


def test_evaluate_data_in_the_config_scores_after_the_stage(image_run, tmp_path):
    from modelworks.evaluate import evaluate

    cfg, data = image_run
    paths = [str(data / "t10k-images-idx3-ubyte.gz"), str(data / "t10k-labels-idx1-ubyte.gz")]
    cfg = cfg.model_copy(deep=True)
    cfg.evaluate.data = [{"type": "idx", "paths": paths}]
    evaluate(cfg)
    got = json.loads(
        (cfg.run_dir / "evaluate_data" / "t10k-images-idx3-ubyte" / "metrics.json").read_text()
    )
    own = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert got["accuracy"] == own["accuracy"] and got["data"]["paths"] == paths


def test_chat_run_scored_on_its_own_test_file(tmp_path):
    from modelworks.config import load_config

    convs = [
        {"messages": [{"role": "user", "content": f"Repeat: word {i}"},
                      {"role": "assistant", "content": f"word {i}"}]}
        for i in range(6)
    ]  # fmt: skip
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    held = {"type": "chat", "split": "test", "paths": [str(tmp_path / "held.jsonl")]}
    sources = [{"type": "synthetic_chat", "limit": 80}, held]
    cfg = load_config(
        None,
        [f"runs_dir={tmp_path / 'runs'}", "name=chat", "task=chat", "threads=1",
         f"collect.sources={json.dumps(sources)}", "preprocess.vocab_size=300",
         "model.d_model=32", "model.n_layer=1", "model.n_head=2", "model.n_kv_head=1",
         "pretrain.steps=4", "pretrain.batch_size=4", "pretrain.seq_len=64",
         "pretrain.warmup_steps=1", "pretrain.eval_every=4", "pretrain.ckpt_every=4",
         "pretrain.eval_batches=1", "evaluate.bootstrap=50", "evaluate.max_new_tokens=4"],
    )  # fmt: skip
    run(cfg)
    before = checksums(cfg.run_dir)
    own = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert own["split"] == "test" and own["conversations"] == 6
    src = data_source(load_run(cfg.run_dir), [str(tmp_path / "held.jsonl")])
    got = json.loads((score_data(cfg.run_dir, src, name="held") / "metrics.json").read_text())
    assert {k: v for k, v in got.items() if k in own} == own
    assert checksums(cfg.run_dir) == before


def test_text_classifier_scored_on_its_own_test_rows(tmp_path):
    from tests.collect.test_splits import _rows, table_config

    rows = _rows()
    csv = "text,label,part\n" + "".join(f"{t},{label},{p}\n" for t, label, p in rows)
    cfg = table_config(
        tmp_path, csv, "model.n_layer=1", "model.d_model=16", "model.n_head=2", "model.d_ff=32",
        "pretrain.steps=4", "pretrain.batch_size=8", "pretrain.seq_len=16",
        "pretrain.warmup_steps=1", "pretrain.eval_every=4", "pretrain.ckpt_every=4",
        "evaluate.bootstrap=50", "tasks.text_classification.explain_samples=0", "threads=1",
    )  # fmt: skip
    run(cfg)
    before = checksums(cfg.run_dir)
    test = [(t, label) for t, label, p in rows if p == "test"] + [("so so", "neutral")]
    (tmp_path / "new.csv").write_text(
        "text,label\n" + "".join(f"{t},{label}\n" for t, label in test)
    )
    src = data_source(load_run(cfg.run_dir), [str(tmp_path / "new.csv")])
    got = json.loads((score_data(cfg.run_dir, src) / "metrics.json").read_text())
    own = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    for key in ("split", "accuracy", "macro_f1", "accuracy_ci", "confusion_matrix"):
        assert got[key] == own[key], key
    assert got["unknown_labels"] == {"rows": 1, "labels": {"neutral": 1}}
    assert checksums(cfg.run_dir) == before


def test_compare_takes_run_names(image_run, monkeypatch, capsys):
    cfg, _ = image_run
    monkeypatch.chdir(cfg.run_dir.parent.parent)  # runs/<name> from here
    assert main(["compare", cfg.name, cfg.name]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and cfg.name in out


def test_checkpoint_and_evaluate_options_apply_to_data(image_run, capsys):
    cfg, data = image_run
    t10k = [str(data / "t10k-images-idx3-ubyte.gz"), str(data / "t10k-labels-idx1-ubyte.gz")]
    args = ["evaluate", str(cfg.run_dir), "--data", *t10k, "--data-name", "final"]
    assert main([*args, "--checkpoint", "final", "evaluate.bootstrap=0"]) == 0
    got = json.loads((cfg.run_dir / "evaluate_data" / "final" / "metrics.json").read_text())
    assert got["checkpoint"]["name"] == "final" and "accuracy_ci" not in got
    assert main([*args, "--checkpoint", "step_9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --checkpoint 'step_9': ") and "\n" not in err
