"""The real SmolLM2-135M-Instruct GGUF (the catalogue's `smollm2-135m-instruct`, put in the cache
by `modelworks pull`, as .ci/run does): our reader against transformers' GGUF loader on the same
file (logits, tokenizer, greedy tokens), and the model served and chatting."""

from __future__ import annotations

import httpx
import pytest
import torch

from modelworks.models.catalogue import CATALOGUE, cache_path

GGUF = cache_path(CATALOGUE["smollm2-135m-instruct"])
pytestmark = pytest.mark.skipif(
    not GGUF.is_file(), reason=f"{GGUF} not pulled: run `modelworks pull smollm2-135m-instruct`"
)
PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Give me three tips for sleeping better.",
    "What does the `len` builtin do in Python?",
    "Translate 'good morning' into Spanish.",
]


@pytest.fixture(scope="module")
def engine():
    from modelworks.serve.engine import Engine

    # the plain model (no packed weights), so its logits are the reader's own
    return Engine.from_gguf(GGUF, "cpu", "smollm2", max_batch=2, pack_weights=False)


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32
    )
    tok = transformers.AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    return model.eval(), tok


def chat_ids(engine, prompt: str) -> list[int]:
    from modelworks.chat_template import engine_chat_text

    return engine.encode(engine_chat_text(engine, [{"role": "user", "content": prompt}]))


def test_config_from_the_metadata(engine):
    c = engine.model.cfg
    assert (c.n_layer, c.n_head, c.n_kv_head, c.d_model, c.ffn_hidden) == (30, 9, 3, 576, 1536)
    assert (c.vocab_size, c.rope_theta, c.norm_eps, c.tie_embeddings) == (49152, 1e5, 1e-5, True)
    assert engine.model.num_params() == 134_515_008
    assert engine.add_start is False and engine.eos == {2}
    assert "<|im_start|>" in engine.chat_template


def test_logits_match_transformers_on_the_same_file(engine, hf):
    model, _ = hf
    ids = torch.tensor([chat_ids(engine, PROMPTS[0]) + list(range(1000, 1040))])
    with torch.no_grad():
        ours, theirs = engine.model(ids), model(ids).logits
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-4, f"max abs logit difference {diff}"


def test_tokenizer_matches_transformers(engine, hf):
    _, tok = hf
    for text in [*PROMPTS, "<|im_start|>user\n  naïve café — 2024-12-06\t<|im_end|>\n"]:
        assert engine.encode(text) == tok(text, add_special_tokens=False)["input_ids"], text
    ids = engine.encode(PROMPTS[1])
    assert engine.decode(ids) == PROMPTS[1]


def _greedy_both(engine, hf, prompt: str, n: int) -> tuple[list[int], list[int]]:
    model, _ = hf
    ids = chat_ids(engine, prompt)
    ours = engine.generate(ids, max_new_tokens=n, temperature=0).token_ids
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=2, pad_token_id=2
        )
    theirs = [t for t in out[0, len(ids) :].tolist() if t != 2]
    return ours, theirs


def test_greedy_answer_is_real_and_matches_transformers(engine, hf):
    ours, theirs = _greedy_both(engine, hf, PROMPTS[0], 24)
    assert ours == theirs
    assert "Paris" in engine.decode(ours)


def test_hf_export_loads_in_transformers_with_the_same_logits(engine, tmp_path):
    import transformers

    from modelworks.export import export
    from modelworks.serve.engine import hf_chat_tokens

    out = export("smollm2-135m-instruct", tmp_path / "hf", "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([chat_ids(engine, PROMPTS[3])])
    with torch.no_grad():
        diff = (model(ids).logits - engine.model(ids)).abs().max().item()
    assert diff < 1e-4, diff
    assert hf_chat_tokens(out)[:2] == (1, {2})  # <|im_start|>, <|im_end|>, as in the GGUF
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok(PROMPTS[3], add_special_tokens=False)["input_ids"] == engine.encode(PROMPTS[3])


@pytest.mark.slow
def test_greedy_64_tokens_on_5_prompts_match_transformers(engine, hf):
    for prompt in PROMPTS:
        ours, theirs = _greedy_both(engine, hf, prompt, 64)
        assert ours == theirs, prompt


def test_served_by_name_answers_chat(tmp_path):
    from tests.conftest import served

    with served("smollm2-135m-instruct", "serve.max_batch=2", "serve.max_model_len=512") as (
        base,
        _,
    ):
        models = httpx.get(f"{base}/v1/models").json()["data"]
        assert models[0]["id"] == "smollm2-135m-instruct"
        body = {
            "messages": [{"role": "user", "content": PROMPTS[0]}],
            "max_tokens": 24,
            "temperature": 0,
        }
        r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert "Paris" in choice["message"]["content"] and choice["finish_reason"] == "stop"
