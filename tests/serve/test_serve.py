"""The serving stack: the batching engine, then every endpoint over a real loopback server.

Servers run in this process (uvicorn in a thread, a real socket on 127.0.0.1) so a test can hold
the engine still and make timeouts and 429s deterministic; tests/serve/test_openai_client.py and
tests/test_e2e.py start `modelworks serve` as a subprocess.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from modelworks.config import ServeConfig
from modelworks.models.gpt import GPT, GPTConfig
from modelworks.serve.engine import Engine, SamplingParams
from tests.conftest import free_port

PROMPTS = ["def", "Return the list of", "x", "The default value is None, which means that", "a b"]


# ----------------------------------------------------------------------------------- helpers


def make_tokenizer():
    from pydoc_data.topics import topics

    from modelworks.preprocess.tokenizer import train_bpe

    return train_bpe(list(topics.values())[:200], 400)


def make_gpt(vocab: int, context: int = 1024, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=vocab,
        context_len=context,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        d_model=64,
        init_std=0.1,
    )
    return GPT(cfg).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, tokenizer):
    from modelworks.models.hf import export_hf

    d = tmp_path_factory.mktemp("hf")
    tokenizer.save(str(d / "tokenizer.json"))
    return export_hf(make_gpt(tokenizer.get_vocab_size()), d / "model", d / "tokenizer.json")


class Server:
    """A uvicorn server for `app` on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while httpx.get(f"{self.base}/health").status_code != 200:
            assert time.time() < deadline, httpx.get(f"{self.base}/health").text
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def lm_server(engine: Engine, **cfg) -> Server:
    from modelworks.serve.app import create_app
    from modelworks.serve.lm_routes import add_lm_routes

    app = create_app(ServeConfig(**cfg))
    add_lm_routes(app, lambda: engine)
    server = Server(app)
    server.wait_healthy()
    return server


@pytest.fixture(scope="module")
def engine(hf_folder):
    return Engine.from_hf(hf_folder, "cpu", max_batch=4)


@pytest.fixture(scope="module")
def server(engine):
    s = lm_server(engine)
    yield s.base
    s.stop()


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def post(base: str, path: str, body, **kw) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=60, **kw)


def sse(response_lines) -> list:
    out = []
    for line in response_lines:
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ------------------------------------------------------------------------------------ engine


def _collect(engine: Engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[tuple]:
    done: dict[int, tuple] = {}
    tokens: dict[int, list[int]] = {i: [] for i in range(len(jobs))}

    def on_event(i):
        def f(ev):
            if ev.token_id is not None:
                tokens[i].append(ev.token_id)
            if ev.finish_reason:
                done[i] = (tokens[i], ev.finish_reason)

        return f

    for i, (ids, params) in enumerate(jobs):
        engine.submit(ids, params, on_event(i))
    deadline = time.time() + 60
    while len(done) < len(jobs):
        assert time.time() < deadline
        time.sleep(0.005)
    return [done[i] for i in range(len(jobs))]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_batched_generation_equals_one_at_a_time(engine, temperature):
    # 5 prompts of different lengths and lengths of output on 4 slots: sequences join and leave
    # the running batch mid-flight; each must get exactly what it gets alone (greedy, or sampled
    # with its own seed)
    prompts = [engine.encode(p) for p in PROMPTS]
    jobs = [
        (
            ids,
            SamplingParams(max_tokens=10 + 7 * i, temperature=temperature, seed=i, ignore_eos=True),
        )
        for i, ids in enumerate(prompts)
    ]
    batched = _collect(engine, jobs)
    for (ids, p), (toks, reason) in zip(jobs, batched, strict=True):
        alone = engine.generate(ids, p.max_tokens, temperature, seed=p.seed)
        assert toks[: len(alone.token_ids)] == alone.token_ids
        assert reason == "length" and len(toks) == p.max_tokens
    assert engine.num_running == 0


def test_requests_sharing_a_prompt_prefix_copy_its_cache_and_get_what_they_get_alone(engine):
    # a common "system prompt", then different questions (and one prompt twice): the later
    # requests copy the shared positions' keys/values from a running one instead of computing
    # them, and still get exactly the tokens they get alone
    system = engine.encode(" ".join(PROMPTS))
    assert len(system) > 16
    prompts = [system + engine.encode(q) for q in (" def", " Return the list", " def")]
    jobs = [(ids, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)) for ids in prompts]
    before = engine.prefix_tokens_reused
    batched = _collect(engine, jobs)
    assert engine.prefix_tokens_reused - before >= 2 * len(system)
    for (ids, p), (toks, _) in zip(jobs, batched, strict=True):
        assert toks == engine.generate(ids, p.max_tokens, 0.0).token_ids


def test_cancelled_sequence_leaves_the_batch_and_frees_its_slot(engine):
    seen, finished = [], threading.Event()

    def on_event(ev):
        seen.append(ev)
        if ev.finish_reason:
            finished.set()

    seq = engine.submit(
        engine.encode("a"), SamplingParams(max_tokens=900, ignore_eos=True), on_event
    )
    while len(seen) < 3:
        time.sleep(0.001)
    seq.cancel()
    assert finished.wait(30)
    assert seen[-1].finish_reason == "abort" and len(seen) < 900
    assert engine.num_running == 0 and engine.free_slots == engine.max_batch


def test_a_failing_step_fails_its_requests_not_the_engine(hf_folder):
    engine = Engine.from_hf(hf_folder, "cpu", max_batch=2)
    real, calls = engine._forward, []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # the first decode step
            raise RuntimeError("boom")
        return real(*args, **kw)

    engine._forward = flaky
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    assert _collect(engine, [(engine.encode("a"), params)])[0][1] == "error"
    tokens, reason = _collect(engine, [(engine.encode("a"), params)])[0]
    assert reason == "length" and len(tokens) == 5 and engine.num_running == 0


# ------------------------------------------------------------------------------- completions


def test_concurrent_requests_get_what_they_get_alone(server):
    bodies = [{"prompt": p, "max_tokens": 24, "temperature": 0} for p in PROMPTS]
    alone = [post(server, "/v1/completions", b).json()["choices"][0]["text"] for b in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: post(server, "/v1/completions", b).json(), bodies))
    assert [r["choices"][0]["text"] for r in together] == alone
    assert len(set(alone)) > 1


def test_streaming_yields_the_same_text_and_usage(server):
    # a stream that falls behind the engine gets fewer, larger chunks (serve/app.py `_run`), and
    # 20 tokens of this tiny model came as one chunk on a loaded machine: ask for enough tokens
    # that the stream cannot fall behind all of them
    body = {"prompt": "Return the", "max_tokens": 160, "temperature": 0, "ignore_eos": True}
    full = post(server, "/v1/completions", body).json()
    with httpx.stream(
        "POST",
        f"{server}/v1/completions",
        timeout=60,
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert len(chunks) > 1  # streamed, not one blob
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"] == full["usage"]
    assert full["usage"]["completion_tokens"] == body["max_tokens"]


def test_stream_lines_survive_unicode_line_separators(server):
    # U+0085, U+2028 and U+2029 are legal raw in JSON strings, but clients that split lines the
    # way str.splitlines does (httpx's iter_lines) would cut an SSE data line at them
    prompt = "a\u2028b\x85c\u2029d"
    body = {"prompt": prompt, "max_tokens": 3, "echo": True, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{server}/v1/completions", timeout=60, json=body) as r:
        raw = r.read().decode()
    assert raw.splitlines() == raw.split("\n")[:-1]  # no line break but the SSE ones
    events = sse(raw.splitlines())
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["text"] == prompt


def test_echo_logprobs_in_the_legacy_shape_match_the_model(server, hf_folder, engine):
    from modelworks.models.hf import import_hf

    prompt = "The default value is None"
    r = post(
        server, "/v1/completions", {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 2}
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    ids = engine.encode(prompt)
    assert choice["text"] == prompt and len(lp["tokens"]) == len(ids)
    assert "".join(lp["tokens"]) == prompt
    assert lp["text_offset"] == [len("".join(lp["tokens"][:i])) for i in range(len(ids))]
    # recompute from the weights on disk: log p(token_i | start, tokens_<i)
    model = import_hf(hf_folder)
    with torch.no_grad():
        logits = model(torch.tensor([[engine.eot, *ids]]))[0].float()
    want = torch.log_softmax(logits[:-1], -1)[torch.arange(len(ids)), torch.tensor(ids)]
    assert np.allclose(lp["token_logprobs"], want.numpy(), atol=1e-4)
    # two alternatives each (fewer when two tokens decode to the same string), the best first
    assert all(
        1 <= len(t) <= 2 and max(t.values()) >= c - 1e-6
        for t, c in zip(lp["top_logprobs"], lp["token_logprobs"], strict=True)
    )
    # generation with logprobs: one entry per generated token
    r = post(
        server,
        "/v1/completions",
        {"prompt": prompt, "max_tokens": 5, "logprobs": 0, "ignore_eos": True, "temperature": 0},
    )
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 5 and all(v <= 0 for v in lp["token_logprobs"])
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0


def test_n_seed_and_stop(server):
    body = {"prompt": ["a", "b"], "n": 2, "max_tokens": 8, "temperature": 1.0, "seed": 5}
    r1, r2 = (
        post(server, "/v1/completions", body).json(),
        post(server, "/v1/completions", body).json(),
    )
    assert len(r1["choices"]) == 4 and r1["choices"] == r2["choices"]
    base = {"prompt": "x", "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    full = post(server, "/v1/completions", base).json()["choices"][0]["text"]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = post(server, "/v1/completions", {**base, "stop": stop}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and full.startswith(cut["text"])
    assert stop not in cut["text"] and len(cut["text"]) < len(full)
    # streamed, a possible start of the stop string is held back, never sent then retracted
    body = {**base, "stop": stop, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as r:
        chunks = sse(r.iter_lines())[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == cut["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# ------------------------------------------------------------------- chat, embeddings, tokens


def test_chat_plain_and_streamed(server):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = {"messages": msgs, "max_completion_tokens": 6, "temperature": 0, "ignore_eos": True}
    r = post(server, "/v1/chat/completions", body).json()
    assert r["object"] == "chat.completion"
    msg = r["choices"][0]["message"]
    assert msg["role"] == "assistant" and r["usage"]["completion_tokens"] <= 6
    n_prompt = post(server, "/tokenize", {"messages": msgs}).json()["count"]
    assert r["usage"]["prompt_tokens"] == n_prompt
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions", json={**body, "stream": True}, timeout=60
    ) as s:
        events = sse(s.iter_lines())
    assert events[-1] == "[DONE]" and events[0]["object"] == "chat.completion.chunk"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == msg["content"]
    # max_tokens is the older name of the same limit
    r = post(
        server, "/v1/chat/completions", {**body, "max_completion_tokens": None, "max_tokens": 3}
    )
    assert r.json()["usage"]["completion_tokens"] <= 3


def test_embeddings_float_and_base64(server, hf_folder, engine):
    texts = ["hello world", "def f(x): return x"]
    f = post(server, "/v1/embeddings", {"input": texts}).json()
    b = post(server, "/v1/embeddings", {"input": texts, "encoding_format": "base64"}).json()
    vecs = [np.array(d["embedding"]) for d in f["data"]]
    assert len(vecs) == 2 and vecs[0].shape == (64,) and not np.allclose(vecs[0], vecs[1])
    decoded = np.frombuffer(base64.b64decode(b["data"][1]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vecs[1], atol=1e-6)
    ids = engine.encode(texts[0])
    assert f["usage"]["prompt_tokens"] == len(ids) + len(engine.encode(texts[1]))
    model = engine.model
    with torch.no_grad():  # mean of the final normed hidden states over the input's tokens
        x = model.tok_emb(torch.tensor([[engine.eot, *ids]]))
        T = x.shape[1]
        for blk in model.blocks:
            x = blk(x, model.rope_cos[:T], model.rope_sin[:T], None, 0)
        want = model.norm(x)[0, 1:].mean(0)
    assert np.allclose(vecs[0], want.numpy(), atol=1e-5)


def test_tokenize_detokenize_round_trip(server):
    text = "Return the list of keys, in order."
    t = post(server, "/tokenize", {"prompt": text}).json()
    assert t["count"] == len(t["tokens"]) > 3 and t["max_model_len"] == 1024
    assert post(server, "/detokenize", {"tokens": t["tokens"]}).json()["prompt"] == text
    models = httpx.get(f"{server}/v1/models").json()["data"]
    assert models[0]["id"] == "model" and models[0]["max_model_len"] == 1024


def test_a_transformers_written_llama_folder_generates_as_transformers(tmp_path, tokenizer):
    transformers = pytest.importorskip("transformers")
    from modelworks.serve import build_app

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, bos_token_id=0, eos_token_id=0, initializer_range=0.1,
        tie_word_embeddings=False,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)  # safetensors, config.json, generation_config.json
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    s = Server(build_app(tmp_path, ServeConfig(model_name="llama"), "cpu"))
    try:
        s.wait_healthy()
        ids = tokenizer.encode("Return the list of").ids
        body = {"prompt": ids, "max_tokens": 12, "temperature": 0, "logprobs": 0}
        lp = post(s.base, "/v1/completions", body).json()["choices"][0]["logprobs"]
        x = torch.tensor([[0, *ids]])
        with torch.no_grad():
            out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                              max_new_tokens=12, min_new_tokens=12)  # fmt: skip
        want = [tokenizer.decode([t]) for t in out[0, x.shape[1] :].tolist()]
        assert lp["tokens"] == want
    finally:
        s.stop()


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "path,body,status,param",
    [
        ("/v1/completions", b"{not json", 400, None),
        ("/v1/completions", b'{"prompt": "\xff\xfe"}', 400, None),
        ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 10**9}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "temperature": 9}, 400, "temperature"),
        ("/v1/completions", {"prompt": [10**9]}, 400, "prompt"),
        ("/v1/completions", {"prompt": []}, 400, "prompt"),
        ("/v1/completions", {"max_tokens": 3}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x", "model": "gpt-9"}, 404, "model"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "wizard", "content": "x"}]},
            400,
            "messages.0.role",
        ),
        ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ],
)
def test_bad_input_is_an_openai_error_and_the_server_lives_on(server, path, body, status, param):
    if isinstance(body, bytes):
        r = httpx.post(
            f"{server}{path}", content=body, headers={"content-type": "application/json"}
        )
    else:
        r = post(server, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    ok = post(server, "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200


ABORTED = 'vllm:request_success_total{model_name="model",finished_reason="abort"}'


def _wait_aborted(server, engine, before: float) -> None:
    deadline = time.time() + 30
    while engine.num_running or metric(server, ABORTED) < before + 1:
        assert time.time() < deadline, "the sequence was not cancelled"
        time.sleep(0.01)
    assert metric(server, ABORTED) == before + 1 and engine.free_slots == engine.max_batch


def test_client_disconnect_mid_stream_frees_the_sequence(server, engine):
    before = metric(server, ABORTED)
    body = {"prompt": "x", "max_tokens": 1000, "ignore_eos": True, "stream": True, "logprobs": 0}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as r:
        data = (line for line in r.iter_lines() if line.startswith("data:"))
        for _ in range(3):
            next(data)  # three tokens arrived, then the client hangs up
    _wait_aborted(server, engine, before)


def test_client_gone_before_a_plain_response_frees_the_sequence(server, engine):
    before = metric(server, ABORTED)
    body = {"prompt": "x", "max_tokens": 1000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/completions", json=body, timeout=0.3)
    _wait_aborted(server, engine, before)


# ---------------------------------------------------------------------------------- limits


def test_health_is_503_while_loading(engine):
    from modelworks.serve.app import create_app
    from modelworks.serve.lm_routes import add_lm_routes

    release = threading.Event()

    def slow_load():
        release.wait(30)
        return engine

    app = create_app(ServeConfig())
    add_lm_routes(app, slow_load)
    s = Server(app)
    try:
        r = httpx.get(f"{s.base}/health")
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        assert post(s.base, "/v1/completions", {"prompt": "x"}).status_code == 503
        release.set()
        s.wait_healthy()
        assert post(s.base, "/v1/completions", {"prompt": "x", "max_tokens": 2}).status_code == 200
    finally:
        release.set()
        s.stop()


def test_keys_body_limit_concurrency_and_timeout(engine):
    s = lm_server(
        engine,
        api_keys=["sk-right"],
        max_body_bytes=2000,
        max_concurrent_requests=1,
        request_timeout=1.0,
    )
    key = {"Authorization": "Bearer sk-right"}
    try:
        body = {"prompt": "x", "max_tokens": 2}
        r = post(s.base, "/v1/completions", body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        bad = post(s.base, "/v1/completions", body, headers={"Authorization": "Bearer sk-wrong"})
        assert bad.status_code == 401
        assert post(s.base, "/v1/completions", body, headers=key).status_code == 200
        assert httpx.get(f"{s.base}/health").status_code == 200  # open
        assert httpx.get(f"{s.base}/v1/models").status_code == 401
        big = post(s.base, "/v1/completions", {"prompt": "x" * 5000}, headers=key)
        assert big.status_code == 413 and "max_body_bytes" in big.json()["error"]["message"]
        # hold the model: the first request stays in flight, the second is one too many
        with engine._lock, ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, s.base, "/v1/completions", body, headers=key)
            deadline = time.time() + 10
            while engine.num_running + engine.num_waiting == 0:
                assert time.time() < deadline
                time.sleep(0.01)
            second = post(s.base, "/v1/completions", body, headers=key)
            assert second.status_code == 429 and second.headers["retry-after"] == "1"
            timed_out = first.result()  # still held past request_timeout
        assert timed_out.status_code == 503 and timed_out.json()["error"]["code"] == "timeout"
        assert post(s.base, "/v1/completions", body, headers=key).status_code == 200
    finally:
        s.stop()


# --------------------------------------------------------------------------------- tasks


def test_image_classification_run_serves_top_k_labels(tmp_path):
    import io

    from PIL import Image
    from safetensors.torch import load_file

    from modelworks.config import load_config
    from modelworks.pipeline import stage_functions
    from modelworks.serve import build_app
    from tests.conftest import ROOT

    cfg = load_config(
        ROOT / "configs" / "mlp.yaml",
        [f"runs_dir={tmp_path}", "pretrain.steps=300", "pretrain.eval_every=300"],
    )
    for stage in ("collect", "preprocess", "pretrain"):  # the report is not needed here
        stage_functions()[stage](cfg, None)
    s = Server(build_app(cfg.run_dir, cfg.serve, "cpu", cfg.task))
    s.wait_healthy()
    try:
        data = load_file(str(cfg.run_dir / "preprocess" / "data.safetensors"))
        classes = json.loads((cfg.run_dir / "preprocess" / "labels.json").read_text())["classes"]
        xs, ys = data["test_x"][:100], data["test_y"][:100]

        def png(x):
            buf = io.BytesIO()
            Image.fromarray(x[0].numpy()).save(buf, format="PNG")
            return buf.getvalue()

        images = [base64.b64encode(png(x)).decode() for x in xs]
        r = post(s.base, "/v1/images/classify", {"images": images, "top_k": 3})
        assert r.status_code == 200, r.text
        out = r.json()["data"]
        assert all(len(d["labels"]) == 3 for d in out)
        assert all(abs(sum(p["probability"] for p in d["labels"])) <= 1 + 1e-6 for d in out)
        top1 = [d["labels"][0]["label"] for d in out]
        accuracy = np.mean([t == str(classes[y]) for t, y in zip(top1, ys.tolist(), strict=True)])
        assert accuracy > 0.8, accuracy  # held-out test images, through the HTTP path
        up = httpx.post(
            f"{s.base}/v1/images/classify",
            files={"image": ("a.png", png(xs[0]))},
            data={"top_k": "1"},
        )
        assert up.status_code == 200, up.text
        assert up.json()["data"][0]["labels"][0]["label"] == top1[0]
        bad = post(s.base, "/v1/images/classify", {"image": base64.b64encode(b"nope").decode()})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "image"
        assert httpx.get(f"{s.base}/v1/models").json()["data"][0]["task"] == "image_classification"
    finally:
        s.stop()
