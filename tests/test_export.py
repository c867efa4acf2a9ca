"""ONNX and int8 exports: onnxruntime must reproduce torch's logits, on every dynamic shape."""

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxruntime", reason="the [export] extra (onnx, onnxscript, onnxruntime)")
pytest.importorskip("onnxscript", reason="the [export] extra (onnx, onnxscript, onnxruntime)")

import onnx  # noqa: E402

from modelworks.config import load_config  # noqa: E402
from modelworks.export import ExportError, export  # noqa: E402
from modelworks.export_onnx import load_onnx, run_onnx, session, to_onnx  # noqa: E402
from modelworks.models.gpt import GPT, GPTConfig  # noqa: E402
from modelworks.models.registry import build_model, lookup  # noqa: E402
from modelworks.pipeline import run  # noqa: E402
from modelworks.preprocess.pack import TokenShards  # noqa: E402
from modelworks.train.checkpoint import load_model  # noqa: E402
from modelworks.train.data import sequential_batches  # noqa: E402
from tests.conftest import ROOT, cli, tiny_overrides  # noqa: E402


def test_decoder_onnx_matches_torch_on_every_batch_and_length(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, context_len=48, d_model=32, n_layer=2, n_kv_head=2))
    model.eval()
    to_onnx(model, tmp_path / "m.onnx", torch.randint(0, 300, (2, 8)))
    sess = session(tmp_path / "m.onnx")
    assert [i.name for i in sess.get_inputs()] == ["input_ids"]
    # shapes other than the traced (2, 8): one token, odd lengths, the full context
    for shape in [(1, 1), (3, 17), (2, 48), (5, 8)]:
        idx = torch.randint(0, 300, shape)
        with torch.no_grad():
            expected = model(idx)
        got = run_onnx(sess, idx)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4), (shape, (got - expected).abs().max())


@pytest.mark.parametrize(
    "name, config, shape",
    [
        pytest.param(
            "mlp", dict(in_features=64, hidden=16, n_classes=5), (1, 8, 8), marks=pytest.mark.slow
        ),
        ("cnn", dict(image_size=16, channels=3, n_classes=4, widths=[8, 16]), (3, 16, 16)),
        ("vit", dict(image_size=16, channels=1, n_classes=3, d_model=32, n_layer=2), (1, 16, 16)),
    ],
)
def test_classifier_onnx_matches_torch_with_dynamic_batch(tmp_path, name, config, shape):
    torch.manual_seed(0)
    model = build_model(lookup(name)[1](**config)).eval()
    to_onnx(model, tmp_path / "m.onnx", torch.randn(2, *shape))
    sess = session(tmp_path / "m.onnx")
    assert [i.name for i in sess.get_inputs()] == ["pixel_values"]
    for batch in (1, 7):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            expected = model(x)
        got = run_onnx(sess, x)
        assert got.shape == (batch, config["n_classes"])
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("export") / "runs"
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", tiny_overrides(runs, "lm"))
    run(cfg)
    return runs / "lm"


def _val_perplexity(forward, run_dir, seq_len, n_batches=16) -> float:
    tokens = TokenShards(run_dir / "preprocess" / "tokens", "val").tokens()
    total, count = 0.0, 0
    for x, y in sequential_batches(tokens, 8, seq_len, n_batches):
        logits = forward(x)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return math.exp(total / count)


@pytest.mark.slow  # the int8 test below covers the same fp32 graph in the default suite
def test_onnx_export_of_a_run_has_tokenizer_and_matches_the_checkpoint(lm_run, tmp_path):
    out = export(lm_run, tmp_path / "onnx", "onnx")
    assert {"model.onnx", "config.json", "tokenizer.json", "export.json"} <= {
        p.name for p in out.iterdir()
    }
    sess, info = load_onnx(out)
    assert info["input"]["name"] == "input_ids" and info["fp32_max_abs_diff_vs_torch"] < 1e-4
    model = load_model(lm_run / "pretrain").eval()
    with torch.no_grad():
        ours = _val_perplexity(model, lm_run, 32)
    assert _val_perplexity(lambda x: run_onnx(sess, x), lm_run, 32) == pytest.approx(ours, 1e-5)


def test_int8_export_logs_a_table_and_keeps_perplexity(lm_run, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="modelworks")
    out = export(lm_run, tmp_path / "int8", "int8")
    assert "| onnx int8 |" in caplog.text
    table = json.loads((out / "quantization.json").read_text())
    rows = {r["variant"]: r for r in table["rows"]}
    assert set(rows) == {"torch fp32", "onnx fp32", "onnx int8"}
    graph = onnx.load(str(out / "model.onnx")).graph
    assert "MatMulInteger" in {n.op_type for n in graph.node}  # really quantised
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(np.prod(t.dims) for t in int8_weights) > 10_000
    info = json.loads((out / "export.json").read_text())
    assert info["input"]["name"] == "input_ids" and info["fp32_max_abs_diff_vs_torch"] < 1e-4
    assert (out / "tokenizer.json").is_file() and not (out / "model.fp32.onnx").exists()
    assert rows["onnx int8"]["size_bytes"] == (out / "model.onnx").stat().st_size
    assert rows["onnx int8"]["size_bytes"] < 0.8 * rows["onnx fp32"]["size_bytes"]
    # the table's perplexity is what the int8 file really gives on the validation tokens
    sess, _ = load_onnx(out)
    ppl8 = _val_perplexity(lambda x: run_onnx(sess, x), lm_run, 32)
    assert rows["onnx int8"]["perplexity"] == pytest.approx(ppl8, rel=1e-4)
    fp32 = rows["torch fp32"]["perplexity"]
    assert rows["onnx fp32"]["perplexity"] == pytest.approx(fp32, rel=1e-5)
    assert abs(ppl8 - fp32) < 0.02 * fp32, (ppl8, fp32)


@pytest.mark.slow
def test_int8_export_of_an_image_classifier_keeps_accuracy(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "mlp.yaml",
        [f"runs_dir={tmp_path / 'runs'}", "pretrain.steps=200", "pretrain.eval_every=100"],
    )
    run(cfg)
    proc = cli("export", str(cfg.run_dir), str(tmp_path / "int8"), "--format", "int8")
    assert "| onnx int8 |" in proc.stdout + proc.stderr  # the table, printed by the command
    out = tmp_path / "int8"
    assert (out / "labels.json").is_file()
    table = json.loads((out / "quantization.json").read_text())
    assert table["metric"] == "accuracy"
    rows = {r["variant"]: r for r in table["rows"]}
    evaluated = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    # same test split, same weights: the fp32 rows reproduce the evaluate stage's accuracy
    assert rows["torch fp32"]["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-6)
    assert rows["onnx fp32"]["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-6)
    assert evaluated["accuracy"] > evaluated["majority_baseline_accuracy"] + 0.3
    assert abs(rows["onnx int8"]["accuracy"] - evaluated["accuracy"]) <= 0.02


def test_onnx_export_needs_held_out_data(lm_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(lm_run / "pretrain", run_dir / "pretrain")
    with pytest.raises(ExportError, match="preprocess/tokens: no token shards"):
        export(run_dir, tmp_path / "out", "onnx")
    assert not (tmp_path / "out").exists()


# ---- text classifiers (our encoder, MiniLM) and formats per model ----------------------------

TEXTS = [
    "awful",
    "The product was awful",
    "great food, friendly staff and a lovely quiet place to sit",
    "the service was slow and the food bland " * 8,  # cut to the model's length
]


@pytest.mark.parametrize("run_fixture", ["minilm_classifier", "encoder_classifier"])
def test_text_classifier_onnx_gives_classify_probabilities_on_padded_batches(
    tmp_path, request, run_fixture
):
    from modelworks.artifacts import final_model_dir, tokenizer_path
    from modelworks.tasks import text_classification as tc

    run_dir = request.getfixturevalue(run_fixture)
    out = export(run_dir, tmp_path / "onnx", "onnx")
    sess, info = load_onnx(out)
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask"]
    assert {"tokenizer.json", "labels.json"} <= {p.name for p in out.iterdir()}
    model = load_model(final_model_dir(run_dir)).eval()
    tok = tc._tokenizer(tokenizer_path(run_dir))
    probs, ids, mask, _ = tc.classify_texts(model, tok, TEXTS, tc.max_tokens(run_dir, model), "cpu")
    got = run_onnx(sess, (ids, mask)).softmax(-1)  # one padded batch of four lengths
    assert (got - probs).abs().max() < 1e-5, (got - probs).abs().max()
    for i in range(len(TEXTS)):  # and one text alone, unpadded
        n = int(mask[i].sum())
        one = run_onnx(sess, (ids[i : i + 1, :n], mask[i : i + 1, :n])).softmax(-1)[0]
        assert (one - probs[i]).abs().max() < 1e-5


def test_text_classifier_int8_keeps_accuracy(encoder_classifier, tmp_path):
    out = export(encoder_classifier, tmp_path / "int8", "int8")
    table = json.loads((out / "quantization.json").read_text())
    assert table["metric"] == "accuracy" and table["items"] == "texts"
    rows = {r["variant"]: r for r in table["rows"]}
    evaluated = json.loads((encoder_classifier / "evaluate" / "metrics.json").read_text())
    # the same test split and weights: torch fp32 reproduces the evaluate stage's accuracy
    assert rows["torch fp32"]["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-6)
    assert rows["onnx fp32"]["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-6)
    assert rows["onnx int8"]["size_bytes"] < rows["onnx fp32"]["size_bytes"]


def test_safetensors_export_carries_tokenizer_and_label_names(encoder_classifier, tmp_path):
    out = export(encoder_classifier, tmp_path / "st", "safetensors")
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "labels.json",
    }
    assert json.loads((out / "labels.json").read_text())["classes"] == ["negative", "positive"]
    model = load_model(out).eval()
    original = load_model(encoder_classifier / "pretrain").eval()
    for a, b in zip(model.state_dict().values(), original.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name, config, fmt, formats",
    [
        (
            "gpt_classifier",
            dict(vocab_size=64, context_len=16, d_model=16, n_layer=1),
            "hf",
            "safetensors, onnx, int8",
        ),
        (
            "encoder",
            dict(vocab_size=64, context_len=16, d_model=16, n_layer=1, n_head=2),
            "onnx",
            "safetensors",
        ),
        (
            "sasrec",
            dict(n_items=20, max_len=8, d_model=16, n_layer=1, n_head=2),
            "hf",
            "safetensors",
        ),
    ],
)
def test_a_format_that_does_not_apply_names_the_formats_that_do(
    tmp_path, name, config, fmt, formats
):
    from modelworks.train.checkpoint import save_model

    save_model(tmp_path / "run" / "pretrain", build_model(lookup(name)[1](**config)))
    proc = cli("export", str(tmp_path / "run"), str(tmp_path / "out"), "--format", fmt, check=False)
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--format {fmt} does not apply" in proc.stderr and formats in proc.stderr
    assert "export_hf" not in proc.stderr and not (tmp_path / "out").exists()
