"""The official `openai` Python SDK against `modelworks serve HF_FOLDER` on a loopback port."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.conftest import served
from tests.serve.test_serve import hf_folder, tokenizer  # noqa: F401  (fixtures)

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(hf_folder):  # noqa: F811
    overrides = ("serve.api_keys=[sk-test]", "serve.model_name=tiny-llama", "device=cpu")
    with served(hf_folder, *overrides) as (base, _):
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)


def test_models_and_completions(client):
    assert [m.id for m in client.models.list()] == ["tiny-llama"]
    c = client.completions.create(
        model="tiny-llama",
        prompt="def main",
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert c.object == "text_completion" and c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 8 and c.usage.total_tokens == c.usage.prompt_tokens + 8
    again = client.completions.create(
        model="tiny-llama",
        prompt="def main",
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert again.choices[0].text == c.choices[0].text


def test_streaming_completion_and_chat(client):
    kw = dict(model="tiny-llama", max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(prompt="Return the", **kw).choices[0].text
    stream = client.completions.create(prompt="Return the", stream=True, **kw)
    assert "".join(ch.choices[0].text for ch in stream) == full

    msgs = [{"role": "user", "content": "Say something."}]
    chat = client.chat.completions.create(messages=msgs, **kw)
    text = chat.choices[0].message.content
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 12
    stream = client.chat.completions.create(
        messages=msgs, stream=True, stream_options={"include_usage": True}, **kw
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_embeddings_and_errors(client):
    e = client.embeddings.create(model="tiny-llama", input=["a cat", "a dog"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 64
    # the SDK asks for base64 by default when numpy is present and decodes it; check both ways
    raw = client.embeddings.with_raw_response.create(
        model="tiny-llama", input="a cat", encoding_format="base64"
    ).http_response.json()
    vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vec, e.data[0].embedding, atol=1e-6)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="x")
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny-llama", prompt="x", max_tokens=10**6)
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="sk-wrong").models.list()
