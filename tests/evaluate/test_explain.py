"""Interpretability: attributions find a planted token; attention maps are the model's own."""

import json

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from modelworks.evaluate.explain import (
    attention_maps,
    classifier_samples_section,
    explain,
    plot_attention,
)
from modelworks.models.encoder import EncoderConfig, build_encoder
from modelworks.models.gpt import GPT, GPTConfig

VOCAB = 40
PLANTED = 7


def _word_tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = WhitespaceSplit()
    return tok


def _planted_data(n: int, length: int, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """Random words (never the planted one); label 1 rows get the planted word somewhere."""
    x = rng.integers(1, VOCAB, (n, length))
    x[x == PLANTED] = PLANTED + 1
    y = rng.integers(0, 2, n)
    pos = rng.integers(0, length, n)
    x[y == 1, pos[y == 1]] = PLANTED
    return torch.tensor(x), torch.tensor(y)


def test_integrated_gradients_rank_the_planted_token_first(tmp_path):
    torch.set_num_threads(1)  # tiny models: threads only contend
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = EncoderConfig(
        vocab_size=VOCAB, context_len=16, n_layer=1, n_head=2, d_model=32, n_classes=2
    )
    cfg.dropout = 0.0
    model = build_encoder(cfg)
    x, y = _planted_data(2048, 12, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        i = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tx, ty = _planted_data(200, 12, rng)  # held out
    with torch.no_grad():
        acc = (model(tx).argmax(1) == ty).float().mean().item()
    assert acc > 0.95, acc
    tok = _word_tokenizer()
    positives = tx[ty == 1][:10]
    for row in positives:
        text = " ".join(f"w{int(t)}" for t in row)
        result = explain(model, tok, text)
        assert result["kind"] == "classifier" and result["target"]["id"] == 1
        assert result["top_tokens"][0]["token"] == f"w{PLANTED}", result["top_tokens"]
        assert np.argmax(result["attributions"]) == int((row == PLANTED).nonzero()[0][0])
    json.dumps(result)  # JSON-ready as the server returns it
    rows = [positives[0], tx[ty == 0][0]]
    texts = [" ".join(f"w{int(t)}" for t in row) for row in rows]
    table, _ = classifier_samples_section(model, tok, texts, [1, 0], ["no", "yes"])
    lines = table.splitlines()
    assert len(lines) == 4 and "| yes | yes (" in lines[2] and f"`w{PLANTED}`" in lines[2]
    plot_attention(result, tmp_path / "attention.png")
    assert (tmp_path / "attention.png").stat().st_size > 5000


def test_gpt_attention_maps_reproduce_the_attention_output():
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=50, context_len=16, n_layer=2, n_head=4, n_kv_head=2, d_model=32)
    ).eval()
    ids = torch.randint(0, 50, (1, 9))
    maps = attention_maps(model, ids)
    assert maps.shape == (2, 4, 9, 9)
    assert np.allclose(maps.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(maps, 1) == 0)  # causal
    # the weights times the values give what the layer's attention really returned
    attn = model.blocks[1].attn
    seen = {}
    h1 = attn.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    h2 = attn.register_forward_hook(lambda m, a, out: seen.update(y=out))
    with torch.no_grad():
        model(ids)
        v = attn.wv(seen["x"]).view(1, 9, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
        y = torch.tensor(maps[1])[None] @ v
        y = attn.wo(y.transpose(1, 2).reshape(1, 9, -1))
    h1.remove()
    h2.remove()
    assert torch.allclose(y, seen["y"], atol=1e-5)


def test_gradient_x_input_finds_the_token_a_copy_model_copies():
    # a model trained to repeat the first word: the next token depends on position 1 only
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=VOCAB, context_len=16, n_layer=2, n_head=2, n_kv_head=2, d_model=32)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        x = torch.randint(1, VOCAB, (64, 8))
        x[:, 0] = 0  # start token
        target = x[:, 1]
        loss = F.cross_entropy(model(x)[:, -1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tok = _word_tokenizer()
    hits = 0
    for _ in range(10):
        words = torch.randint(1, VOCAB, (7,)).tolist()
        result = explain(model, tok, " ".join(f"w{w}" for w in words), start_id=0)
        assert result["kind"] == "language_model" and len(result["attributions"]) == 8
        hits += result["target"]["id"] == words[0] and result["top_tokens"][0]["position"] == 1
    assert hits >= 7, hits


def test_vit_attention_maps_reproduce_the_attention_output():
    from modelworks.models.registry import build_model
    from modelworks.models.vit import ViTConfig

    torch.manual_seed(0)
    model = build_model(
        ViTConfig(
            image_size=8, channels=1, patch_size=4, n_layer=2, n_head=2, d_model=16, n_classes=3
        )
    ).eval()
    image = torch.randn(1, 1, 8, 8)
    maps = attention_maps(model, image)
    assert maps.shape == (2, 2, 5, 5) and np.allclose(maps.sum(-1), 1, atol=1e-5)
    attn, seen = model.blocks[0].attn, {}
    h1 = attn.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    h2 = attn.register_forward_hook(lambda m, a, out: seen.update(y=out))
    with torch.no_grad():
        model(image)
        v = attn.qkv(seen["x"]).view(1, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)[2]
        y = attn.proj((torch.tensor(maps[0])[None] @ v).transpose(1, 2).reshape(1, 5, 16))
    h1.remove()
    h2.remove()
    assert torch.allclose(y, seen["y"], atol=1e-5)


def test_explanations_explain_what_classify_classifies_with_no_padding(minilm_classifier):
    """MiniLM's tokenizer pads to 128: the explained input must be /v1/classify's own (same
    tokens, mask, forward and length cut), in the API, samples.json and token_heat.png."""
    import httpx
    from PIL import Image

    from tests.conftest import served

    classes = json.loads((minilm_classifier / "preprocess" / "labels.json").read_text())["classes"]
    texts = [
        "awful",
        "The product was awful",
        "great food, friendly staff and a lovely quiet place to sit",
        "the service was slow and the food bland " * 6,  # longer than finetune.seq_len=32
    ]
    with served(minilm_classifier) as (base, _):
        for text in texts:
            c = httpx.post(f"{base}/v1/classify", json={"input": text}, timeout=60).json()
            e = httpx.post(f"{base}/v1/explain", json={"input": text}, timeout=120).json()
            probs = {x["label"]: x["probability"] for x in c["data"][0]["labels"]}
            assert classes[e["target"]["id"]] == c["data"][0]["label"]
            assert abs(e["target"]["probability"] - probs[c["data"][0]["label"]]) < 1e-5, text
            assert "[PAD]" not in e["tokens"] and 0 not in e["token_ids"], e["tokens"]
            assert e["tokens"][0] == "[CLS]" and e["tokens"][-1] == "[SEP]"
            assert len(e["tokens"]) <= 32 and len(e["attention_mean"]) == len(e["tokens"])
    samples = json.loads((minilm_classifier / "evaluate" / "samples.json").read_text())
    assert samples and all("[PAD]" not in s["tokens"] for s in samples)
    # the picture is one cell per token: its width follows the longest sample, not padding
    longest = max(len(s["tokens"]) for s in samples)
    width, _ = Image.open(minilm_classifier / "evaluate" / "token_heat.png").size
    assert width == round(100 * min(16, 1 + 0.6 * longest)), (width, longest)
