"""Hugging Face interop: parity of logits and greedy generations both ways, and clear refusals."""

import json
import os
import pydoc_data.topics

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")

from modelworks.models.gpt import GPT, GPTConfig  # noqa: E402
from modelworks.models.hf import HFError, export_hf, import_hf  # noqa: E402
from modelworks.preprocess.tokenizer import train_bpe  # noqa: E402

VOCAB, PROMPT_LEN, NEW_TOKENS = 128, 20, 20


def hf_llama(tied: bool):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=10000,
        tie_word_embeddings=tied,
        # no eos: generation must run all NEW_TOKENS steps on both sides
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return randomise(transformers.LlamaForCausalLM(cfg).eval())


def our_gpt(tied: bool) -> GPT:
    torch.manual_seed(1)
    cfg = GPTConfig(VOCAB, context_len=64, n_layer=2, n_head=4, n_kv_head=2, d_model=64)
    cfg.tie_embeddings = tied
    return randomise(GPT(cfg).eval())


@torch.no_grad()
def randomise(model):
    """Both inits are too gentle for a sharp test: norm gains are exactly 1 (so a swapped norm
    passes) and std=0.02 weights make greedy decoding repeat one token. Widen both."""
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.uniform_(0.5, 1.5)
        else:
            p.normal_(std=0.2)
    return model


def prompt() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(2))


@torch.no_grad()
def greedy_ours(model: GPT, idx: torch.Tensor, steps: int) -> torch.Tensor:
    cache = model.new_cache(idx.shape[0])
    logits = model(idx, cache=cache, start_pos=0)
    out = idx
    for _ in range(steps):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
        logits = model(nxt, cache=cache, start_pos=out.shape[1] - 1)
    return out


@torch.no_grad()
def greedy_hf(model, idx: torch.Tensor, steps: int) -> torch.Tensor:
    mask = torch.ones_like(idx)
    return model.generate(idx, attention_mask=mask, do_sample=False, max_new_tokens=steps)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_import_matches_hf_logits_and_greedy_generation(tmp_path, tied):
    hf = hf_llama(tied)
    hf.save_pretrained(tmp_path / "hf")
    ours = import_hf(tmp_path / "hf").eval()
    assert ours.cfg.tie_embeddings is tied
    assert ours.cfg.n_kv_head == 2 and ours.cfg.norm_eps == hf.config.rms_norm_eps
    idx = prompt()
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours(idx)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    gen_hf = greedy_hf(hf, idx, NEW_TOKENS)
    assert gen_hf.shape == (2, PROMPT_LEN + NEW_TOKENS)
    assert torch.equal(greedy_ours(ours, idx, NEW_TOKENS), gen_hf)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_loads_in_transformers_with_same_logits_and_generation(tmp_path, tied):
    ours = our_gpt(tied)
    out = export_hf(ours, tmp_path / "export")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.tie_word_embeddings is tied
    assert hf.dtype == torch.float32
    idx = prompt()
    with torch.no_grad():
        expected = ours(idx)
        got = hf(idx).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert torch.equal(greedy_hf(hf, idx, NEW_TOKENS), greedy_ours(ours, idx, NEW_TOKENS))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_then_import_is_bit_identical(tmp_path, tied):
    ours = our_gpt(tied)
    back = import_hf(export_hf(ours, tmp_path / "export"))
    assert back.cfg == ours.cfg
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_exported_tokenizer_encodes_like_ours(tmp_path):
    texts = list(pydoc_data.topics.topics.values())
    tok = train_bpe(texts, 300)
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), context_len=64, d_model=32, n_layer=1))
    out = export_hf(model, tmp_path / "export", tokenizer_json=tmp_path / "tokenizer.json")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    sentence = "The  quick brown fox jumps over the lazy dog; déjà vu.\n"
    ids = tok.encode(sentence).ids
    assert hf_tok.encode(sentence, add_special_tokens=False) == ids
    # tokenizer(text) starts with the start token, as our engine starts every prompt
    assert hf_tok(sentence)["input_ids"] == [tok.token_to_id("<|endoftext|>"), *ids]
    assert hf_tok.decode(ids) == sentence
    eos = tok.token_to_id("<|endoftext|>")
    assert hf_tok.eos_token_id == eos
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == eos


def test_unsupported_architecture_is_named(tmp_path):
    hf_llama(True).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFError, match="GPT2LMHeadModel") as e:
        import_hf(tmp_path)
    assert "LlamaForCausalLM" in str(e.value) and "\n" not in str(e.value)


def test_rope_scaling_is_refused(tmp_path):
    hf_llama(True).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFError, match="llama3"):
        import_hf(tmp_path)


def test_truncated_weights_name_the_file(tmp_path):
    hf_llama(True).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(HFError, match="model.safetensors") as e:
        import_hf(tmp_path)
    assert "\n" not in str(e.value)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(HFError, match="no-such-model"):
        import_hf(tmp_path / "no-such-model")


def test_export_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(HFError, match="not an earlier export"):
        export_hf(our_gpt(True), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("where", ["rope_parameters", "legacy"])
def test_rope_theta_is_read_from_either_config_layout(tmp_path, where):
    hf_llama(True).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    theta = 12345.0  # not anybody's default
    cfg.pop("rope_parameters", None)
    if where == "rope_parameters":
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    else:  # transformers 4.x: top-level rope_theta, rope_scaling null
        cfg.update(rope_theta=theta, rope_scaling=None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = import_hf(tmp_path, context_len=32)
    assert (model.cfg.rope_theta, model.cfg.context_len) == (theta, 32)


def test_sharded_folder_imports_like_a_single_file(tmp_path):
    hf = hf_llama(False)
    hf.save_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    one, sharded = import_hf(tmp_path / "one"), import_hf(tmp_path / "sharded")
    for (name, a), b in zip(one.state_dict().items(), sharded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_mistral_imports_with_context_capped_to_its_window(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=32,
    )
    hf = randomise(transformers.MistralForCausalLM(cfg).eval())
    hf.save_pretrained(tmp_path)
    ours = import_hf(tmp_path)
    assert ours.cfg.context_len == 32
    idx = prompt()
    with torch.no_grad():
        expected, got = hf(idx).logits, ours(idx)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_qwen2_is_refused_for_its_biases(tmp_path):
    hf_llama(True).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFError, match="Qwen2ForCausalLM.*bias"):
        import_hf(tmp_path)


def test_export_command_writes_a_run_that_transformers_loads(tmp_path):
    from modelworks.config import load_config
    from modelworks.pipeline import run
    from modelworks.train.checkpoint import load_model
    from tests.conftest import cli, tiny_overrides

    runs = tmp_path / "runs"
    cfg = load_config(None, tiny_overrides(runs, "lm") + ["pretrain.steps=4"])
    run(cfg)
    out = tmp_path / "hf"
    cli("export", str(runs / "lm"), str(out))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ours = load_model(runs / "lm" / "pretrain").eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok.encode("def main():\n    return")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)
    bad = cli(
        "export", str(runs / "lm"), str(tmp_path / "x"), "--checkpoint", "step_9", check=False
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "step_9" in bad.stderr


def test_exported_run_generates_in_transformers_what_our_server_generates(tmp_path):
    """Plain AutoTokenizer + generate on the export, no manual start token, gives the greedy
    text of `modelworks serve` on the run, for 5 prompts."""
    import httpx

    from modelworks.config import load_config
    from modelworks.pipeline import run
    from tests.conftest import cli, served, tiny_overrides

    runs = tmp_path / "runs"
    # enough steps that the greedy text depends on the prompt (and on its start token)
    longer = ["pretrain.steps=300", "pretrain.lr=3e-3", "pretrain.batch_size=8", "model.d_model=64"]
    run(load_config(None, tiny_overrides(runs, "lm") + longer))
    out = tmp_path / "hf"
    cli("export", str(runs / "lm"), str(out), "--format", "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    prompts = ["Return the", "def main():", "The", "import os\nimport", "class Foo:\n    def"]
    with served(runs / "lm") as (base, _):
        for prompt in prompts:
            body = {"prompt": prompt, "max_tokens": 12, "temperature": 0}
            r = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            inputs = tok(prompt, return_tensors="pt")
            assert inputs["input_ids"][0, 0] == tok.bos_token_id
            with torch.no_grad():
                gen = hf.generate(**inputs, do_sample=False, max_new_tokens=12)
            text = tok.decode(gen[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            assert text == r.json()["choices"][0]["text"], prompt


@pytest.mark.parametrize("run_fixture", ["minilm_classifier", "encoder_classifier"])
def test_text_classifier_export_loads_as_a_sequence_classifier_with_our_probabilities(
    tmp_path, request, run_fixture
):
    """MiniLM fine-tuned (mean pooling, WordPiece padded to 128) and our own encoder (first-token
    pooling, BPE): AutoModelForSequenceClassification + AutoTokenizer on the export give
    /v1/classify's probabilities (classify_texts) with the run's label names."""
    from modelworks.artifacts import final_model_dir, tokenizer_path
    from modelworks.tasks import text_classification as tc
    from modelworks.train.checkpoint import load_model
    from tests.conftest import cli

    run_dir = request.getfixturevalue(run_fixture)
    out = tmp_path / "hf"
    cli("export", str(run_dir), str(out), "--format", "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        out, trust_remote_code=True
    ).eval()
    # AutoTokenizer reads config.json too, whose class is the folder's code: trust it here as well
    tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    classes = tc.classes_of(run_dir)
    assert hf.config.id2label == dict(enumerate(classes))
    assert hf.config.label2id == {c: i for i, c in enumerate(classes)}
    model = load_model(final_model_dir(run_dir))
    max_len = tc.max_tokens(run_dir, model)
    texts = [
        "awful",
        "The product was awful",
        "great food, friendly staff and a lovely quiet place to sit",
        "the service was slow and the food bland " * 8,  # cut to max_len on both sides
    ]
    run_tok = tc._tokenizer(tokenizer_path(run_dir))  # what /v1/classify reads texts with
    ours, ids, mask, n_cut = tc.classify_texts(model.eval(), run_tok, texts, max_len, "cpu")
    assert n_cut >= 1
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"][:, : ids.shape[1]] * mask, ids * mask)
    with torch.no_grad():
        theirs = hf(**batch).logits.softmax(-1)
    assert (theirs - ours).abs().max() < 1e-5, (theirs - ours).abs().max()
    # one at a time, unpadded, as a pipeline would
    for text, p in zip(texts, ours, strict=True):
        with torch.no_grad():
            one = hf(**tok(text, truncation=True, return_tensors="pt")).logits.softmax(-1)[0]
        assert (one - p).abs().max() < 1e-5
    # without trust_remote_code it fails loudly, never a stock BERT head with random weights
    with pytest.raises(ValueError, match="trust_remote_code"):
        transformers.AutoModelForSequenceClassification.from_pretrained(out)
