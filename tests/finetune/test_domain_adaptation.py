"""Continued pretraining (domain adaptation): a base language model trained further on new data
through `modelworks finetune`, with the base's tokenizer reused by preprocess."""

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from modelworks import load_config
from modelworks.errors import ModelworksError
from modelworks.pipeline import run
from tests.conftest import tiny_overrides


def _code_corpus(folder: Path, n: int = 60) -> Path:
    """A new domain: Python source files of the standard library (every install has them)."""
    folder.mkdir(parents=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in (stdlib / "email").glob("*.py") if p.stat().st_size > 2000)
    files += sorted(p for p in (stdlib / "json").glob("*.py"))
    for p in files[:n]:
        shutil.copy(p, folder / f"{p.stem}.txt")
    return folder


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    runs = tmp / "runs"
    base = load_config(overrides=[*tiny_overrides(runs, "base"), "pretrain.steps=30"])
    run(base)
    code = _code_corpus(tmp / "code")
    ft = [
        *tiny_overrides(runs, "code"),
        "collect.sources.0.type=files",
        f"collect.sources.0.paths=[{code}/*.txt]",
        "collect.sources.0.limit=1000",
        "preprocess.min_chars=50",
        "preprocess.val_fraction=0.2",
        f"preprocess.tokenizer={runs / 'base'}",
        f"finetune.from={runs / 'base'}",
        "finetune.steps=60",
        "finetune.lr=3e-3",
        "finetune.warmup_steps=2",
        "finetune.batch_size=4",
        "finetune.seq_len=32",
        "finetune.eval_every=20",
        "finetune.eval_batches=4",
    ]
    cfg = load_config(overrides=ft)
    done = run(cfg)
    return runs, cfg, done


def test_continued_pretraining_lowers_perplexity_on_the_new_domain(adapted):
    runs, cfg, done = adapted
    assert done["finetune"] == "ran" and "pretrain" not in done
    tuned = json.loads((runs / "code" / "finetune" / "manifest.json").read_text())["summary"]
    # the same held-out code windows, before and after: a clear drop in loss
    assert tuned["final_validation"]["val_loss"] < tuned["base_val_loss"] - 0.25, tuned
    metrics = json.loads((runs / "code" / "evaluate" / "metrics.json").read_text())
    assert metrics["perplexity"] < metrics["base_val_perplexity"], metrics
    report = (runs / "code" / "evaluate" / "report.md").read_text()
    assert "base model before fine-tuning" in report
    # the base run is only read
    base_manifest = json.loads((runs / "base" / "pretrain" / "manifest.json").read_text())
    assert base_manifest["status"] == "complete"
    assert (runs / "code" / "finetune" / "tokenizer.json").read_bytes() == (
        runs / "base" / "preprocess" / "tokenizer.json"
    ).read_bytes()


def test_adapted_run_is_what_the_engine_serves(adapted):
    from modelworks.serve.engine import Engine
    from modelworks.train.checkpoint import load_model

    runs, _, _ = adapted
    engine = Engine.from_run(runs / "code", "cpu")
    tuned = load_model(runs / "code" / "finetune")
    for a, b in zip(engine.model.state_dict().values(), tuned.state_dict().values(), strict=True):
        assert (a == b).all()
    out = engine.generate("def ", 8, temperature=0.0)
    assert out.finish_reason in ("length", "stop")


def test_shards_from_another_tokenizer_are_refused(adapted, tmp_path):
    runs, _, _ = adapted
    # a run that trained its own tokenizer cannot continue the base: one clear line
    cfg = load_config(
        overrides=[
            *tiny_overrides(tmp_path / "runs", "mismatch"),
            "preprocess.vocab_size=600",
            f"finetune.from={runs / 'base'}",
            "finetune.steps=2",
            "finetune.warmup_steps=0",
            "finetune.seq_len=32",
        ]
    )
    with pytest.raises(ModelworksError, match="preprocess.tokenizer"):
        run(cfg)


def test_unknown_tokenizer_source_names_the_field(tmp_path):
    cfg = load_config(
        overrides=[
            *tiny_overrides(tmp_path / "runs", "bad"),
            f"preprocess.tokenizer={tmp_path / 'nowhere'}",
        ]
    )
    with pytest.raises(ModelworksError, match=r"preprocess.tokenizer=.*nowhere"):
        run(cfg)
