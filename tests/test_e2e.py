"""The whole lifecycle through the real CLI, then a real HTTP server on a loopback port."""

import json

import httpx
import pytest

from tests.conftest import cli, served, tiny_overrides

# a little more training than `tiny`, enough for the model to beat the unigram baseline
LONGER = [
    "pretrain.steps=100",
    "model.d_model=64",
    "pretrain.lr=0.006",
    "pretrain.batch_size=16",
    "pretrain.seq_len=64",
    "pretrain.eval_every=50",
    "pretrain.warmup_steps=10",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = tmp_path_factory.mktemp("e2e") / "runs"
    proc = cli("run", *tiny_overrides(runs), *LONGER)
    assert "done: report at" in proc.stdout
    return runs / "tiny"


def test_run_produces_every_artifact_and_beats_unigram(trained):
    for path in [
        "collect/documents.parquet",
        "preprocess/tokenizer.json",
        "preprocess/tokens/meta.json",
        "pretrain/model.safetensors",
        "pretrain/config.json",
        "pretrain/metrics.jsonl",
        "evaluate/report.md",
        "evaluate/report.html",
        "evaluate/loss.png",
        "config.yaml",
    ]:
        assert (trained / path).is_file(), path
    m = json.loads((trained / "evaluate" / "metrics.json").read_text())
    assert m["split"] == "val"
    assert m["perplexity"] < 0.8 * m["unigram_perplexity"], m


@pytest.fixture(scope="module")
def server(trained):
    with served(trained) as (base, _):
        yield base


def test_completion_over_http(server):
    models = httpx.get(f"{server}/v1/models").json()
    assert models["data"][0]["id"] == "tiny"
    body = {"model": "tiny", "prompt": "Return the", "max_tokens": 6, "temperature": 0}
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion"
    choice = out["choices"][0]
    assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["text"], str)
    assert out["usage"]["completion_tokens"] <= 6
    assert (
        out["usage"]["total_tokens"]
        == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    )
    # greedy is deterministic; a seed makes sampling reproducible
    assert httpx.post(f"{server}/v1/completions", json=body).json()["choices"][0] == choice
    sampled = {**body, "temperature": 1.0, "seed": 3, "prompt": ["a", "b"], "n": 2}
    r1 = httpx.post(f"{server}/v1/completions", json=sampled).json()
    r2 = httpx.post(f"{server}/v1/completions", json=sampled).json()
    assert len(r1["choices"]) == 4 and r1["choices"] == r2["choices"]


def test_stop_string_truncates(server):
    body = {"prompt": "The list", "max_tokens": 30, "temperature": 0}
    full = httpx.post(f"{server}/v1/completions", json=body).json()["choices"][0]["text"]
    stop = full.strip()[:2]
    cut = httpx.post(f"{server}/v1/completions", json={**body, "stop": [stop]}).json()
    assert stop not in cut["choices"][0]["text"]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_errors_are_openai_shaped(server):
    too_long = {"prompt": "word " * 100, "max_tokens": 8}
    r = httpx.post(f"{server}/v1/completions", json=too_long)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "exceeds the model's context" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/completions", json={"prompt": "x", "model": "gpt-9"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(f"{server}/v1/completions", json={"prompt": "x", "max_tokens": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(
        f"{server}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "error" in r.json()


def test_explain_returns_attention_and_attributions(server):
    r = httpx.post(f"{server}/v1/explain", json={"input": "Return the list of"}, timeout=60)
    assert r.status_code == 200, r.text
    e = r.json()
    n = len(e["tokens"])
    assert e["kind"] == "language_model" and n > 1 and len(e["attributions"]) == n
    assert len(e["attention"]) == e["n_layer"] and len(e["attention"][0]) == e["n_head"]
    rows = e["attention_mean"]
    assert all(abs(sum(row) - 1) < 1e-3 for row in rows)  # each query's weights sum to one
    assert all(w == 0 for i, row in enumerate(rows) for w in row[i + 1 :])  # causal
    bad = httpx.post(f"{server}/v1/explain", json={"input": ""}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
