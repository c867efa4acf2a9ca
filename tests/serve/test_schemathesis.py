"""The server held to its own OpenAPI schema by schemathesis.

A real uvicorn server on 127.0.0.1 serves a tiny model; schemathesis reads /openapi.json from it
and sends generated requests to every operation, valid ones (positive mode) and invalid ones
(negative mode), with API keys off and on. Every response must pass: no 5xx; a status code the
schema declares; the declared content type and headers; a body that matches the declared schema
(errors in the OpenAI shape); an invalid request answered with a 4xx; and for a streamed answer,
every `data:` event a chunk of the declared shape (or an error), then `[DONE]`. Without the key
every /v1/* request is a 401 in the error shape. The default suite sends ~220 requests in this
process (hypothesis drives schemathesis's strategies); the slow one runs the `st run` command
(whose coverage phase adds boundary values) and checks a text classification server too.
The last default test keeps what schemathesis found fixed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import requests
import schemathesis
import torch
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from modelworks.serve import schema as docs
from modelworks.serve.engine import Engine
from tests.serve.test_serve import lm_server, make_gpt, make_tokenizer

KEY = "sk-schemathesis"
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
STREAMS: Counter = Counter()  # streamed answers checked, per operation
STREAMED = ("POST /v1/completions", "POST /v1/chat/completions")


def _streamed(case):
    """The generated request, streamed, with a max_tokens that fits a 64-token context (random
    ones rarely do, so few streams would be checked otherwise)."""
    if isinstance(case.body, dict):
        rest = {k: v for k, v in case.body.items() if k != "max_completion_tokens"}
        case.body = {**rest, "stream": True, "max_tokens": 4}
    return case


def streams_conform(ctx, response, case) -> None:
    """A streamed answer: every event is a chunk of the declared shape (or an error), the last
    is [DONE]."""
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return None
    STREAMS[case.operation.label] += 1
    assert not response.stream_cut_short, "the stream was longer than max-stream-events"
    chunk = docs.ChatCompletionChunk if "chat" in case.operation.path else docs.CompletionChunk
    events = [e[len("data: ") :] for e in response.text.split("\n\n") if e]
    assert events and events[-1] == "[DONE]", f"the stream does not end with [DONE]: {events[-3:]}"
    for data in events[:-1]:
        obj = json.loads(data)
        model = docs.ErrorResponse if "error" in obj else chunk
        model.model_validate(obj, strict=False)
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    streams_conform,
]


def fuzz(base: str, max_examples: int, headers: dict | None = None) -> dict[str, Counter]:
    """Send generated requests to every operation of the server's schema, valid and invalid ones,
    each response held to CHECKS; returns the status codes seen, per operation. A failing check
    fails the test (after hypothesis shrinks the request to a small one)."""
    config = schemathesis.Config.from_dict({"max-stream-events": 100_000})  # whole streams
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=config)
    seen: dict[str, Counter] = {}
    with requests.Session() as session:
        call = {"base_url": base, "session": session, "headers": headers}
        for result in schema.get_all_operations():
            op = result.ok()
            counts = seen.setdefault(op.label, Counter())
            for mode in MODES:
                if mode is GenerationMode.NEGATIVE and not op.body.items and not op.query.items:
                    continue  # nothing in a bodiless GET can be invalid
                _send(op.as_strategy(generation_mode=mode), max_examples, counts, **call)
            if op.label in STREAMED:  # valid requests with "stream": true and room to answer
                _send(op.as_strategy().map(_streamed), max_examples, counts, **call)
    return seen


def _send(strategy, max_examples: int, counts: Counter, **call) -> None:
    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one(case):
        r = case.call_and_validate(**call, checks=CHECKS, timeout=60)
        counts[r.status_code] += 1

    one()


def _report(name: str, seen: dict[str, Counter]) -> int:
    total = sum(sum(c.values()) for c in seen.values())
    print(f"\n{name}: {total} requests")
    for label, c in seen.items():
        print(f"  {label:28} {dict(sorted(c.items()))}")
    return total


@pytest.fixture(autouse=True)
def _one_thread():  # the engine's steps are tiny: more threads only contend (conftest restores)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from modelworks.models.hf import export_hf

    d = tmp_path_factory.mktemp("hf")
    tok = make_tokenizer()
    tok.save(str(d / "tokenizer.json"))
    # a short context keeps the longest generation schemathesis can ask for quick
    folder = export_hf(
        make_gpt(tok.get_vocab_size(), context=64), d / "model", d / "tokenizer.json"
    )
    return Engine.from_hf(folder, "cpu", max_batch=16)  # n=16 choices in one batch


def _check_totals(seen: dict[str, Counter], at_least: int) -> int:
    total = sum(sum(c.values()) for c in seen.values())
    assert total >= at_least, seen
    statuses = set().union(*seen.values())
    assert not {s for s in statuses if s >= 500}, seen
    # both valid and refused requests were exercised
    assert 200 in statuses and 400 in statuses, seen
    return total


def test_schema_declares_the_openai_error_shape_and_no_422(engine):
    server = lm_server(engine, api_keys=[KEY])
    try:
        spec = requests.get(f"{server.base}/openapi.json", timeout=10).json()
    finally:
        server.stop()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            codes = op["responses"]
            assert "422" not in codes, (path, method)
            expected = {"400", "413", "429"} if method == "post" else set()
            expected |= {"401"} if path.startswith("/v1/") else set()
            expected |= {"404", "503"} if method == "post" else set()
            assert expected <= set(codes), (path, method, sorted(codes))
            for code in expected:
                assert codes[code]["content"]["application/json"]["schema"] == error
    streamed = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(streamed) == {"application/json", "text/event-stream"}
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_generated_requests_without_keys_get_no_5xx_and_match_the_schema(engine):
    server = lm_server(engine, request_timeout=30)
    try:
        seen = fuzz(server.base, max_examples=8)
    finally:
        server.stop()
    _check_totals(seen, at_least=100)
    # streamed answers were among them, each checked event by event
    assert STREAMS["POST /v1/completions"] and STREAMS["POST /v1/chat/completions"], STREAMS
    _report("no keys", seen)
    print(f"  streamed answers checked: {dict(STREAMS)}")


def test_generated_requests_with_keys_on(engine):
    server = lm_server(engine, api_keys=[KEY], request_timeout=30)
    try:
        with_key = fuzz(server.base, max_examples=5, headers={"Authorization": f"Bearer {KEY}"})
        without = fuzz(server.base, max_examples=2)
    finally:
        server.stop()
    _check_totals(with_key, at_least=60)
    for label, counts in without.items():
        if " /v1/" in label:  # every /v1/* answer is a 401 (checked against the schema too)
            assert set(counts) == {401}, (label, counts)
        else:  # /health, /metrics, /tokenize, /detokenize stay open
            assert 401 not in counts, (label, counts)
    _report("keys on, with the key", with_key)
    _report("keys on, no key", without)


def st_run(base: str, cwd: Path, *extra: str, max_examples: int = 50) -> int:
    """The `st run` command on the server: examples, coverage (boundary values for every field)
    and fuzzing phases, every check but positive_data_acceptance (the server refuses some
    schema-valid requests for reasons a schema cannot say: a token id past the vocabulary, a
    prompt past the context, whitespace for a text). Runs in `cwd` (it writes a cache folder
    there). Returns the number of test cases."""
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--max-examples", str(max_examples), "--seed", "1", "--workers", "1",
         "--request-timeout", "60", "--continue-on-failure", "--no-color", *extra],
        capture_output=True, text=True, timeout=1200, cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", proc.stdout)
    assert cases, proc.stdout[-3000:]
    print(proc.stdout[proc.stdout.index("SUMMARY") :])
    return int(cases[1])


@pytest.mark.slow
def test_schemathesis_command_finds_nothing_with_keys_off_and_on(engine, tmp_path):
    server = lm_server(engine, request_timeout=60)
    try:
        open_ = st_run(server.base, tmp_path)
    finally:
        server.stop()
    server = lm_server(engine, api_keys=[KEY], request_timeout=60)
    try:  # ignored_auth: the same requests without the key must be refused
        keyed = st_run(server.base, tmp_path, "-H", f"Authorization: Bearer {KEY}")
    finally:
        server.stop()
    print(f"st run: {open_} test cases with keys off, {keyed} with keys on, none failed")
    assert open_ > 500 and keyed > 500


# --------------------------------------------------------------- what schemathesis found, kept


def test_what_schemathesis_found_stays_fixed(engine):
    from modelworks.serve.engine import sample_next

    # 1. a 500: top_p=5e-324 (the smallest positive double) is 0 in float32, so the nucleus cut
    # dropped every token and sampling failed; a temperature as small divided the logits to inf
    logits = torch.randn(50)
    assert 0 <= sample_next(logits, 1.0, 5e-324, 0, torch.Generator().manual_seed(0)) < 50
    for tiny in (1e-40, 5e-324):  # logits / tiny is inf in float32: softmax gave NaN
        assert sample_next(logits, tiny, 1.0, 0, None) == int(logits.argmax())
    server = lm_server(engine)
    try:
        url = f"{server.base}/v1/completions"
        for body in (
            {"prompt": "", "top_p": 5e-324},
            {"prompt": "def", "temperature": 1e-40, "max_tokens": 4},
            {"prompt": "def", "top_p": 5e-324, "stream": True, "max_tokens": 4},
        ):
            r = requests.post(url, json=body, timeout=60)
            assert r.status_code == 200 and "server_error" not in r.text, (body, r.text)
        # 2. wrong JSON types were coerced and served (false as token 0, 1.0 as n=1)
        for path, body, param in (
            ("/detokenize", {"tokens": [False]}, "tokens.0"),
            ("/v1/completions", {"prompt": "x", "n": 1.0}, "n"),
            ("/v1/chat/completions", {"messages": [{"role": "user"}], "top_logprobs": False},
             "top_logprobs"),
            ("/v1/embeddings", {"input": [[False]]}, "input"),
        ):  # fmt: skip
            r = requests.post(server.base + path, json=body, timeout=60)
            assert r.status_code == 400, (path, body, r.text)
            assert r.json()["error"]["param"].startswith(param), r.text
        # 3. a 405 lost its Allow header (RFC 9110 requires it)
        r = requests.request("TRACE", f"{server.base}/health", timeout=10)
        assert r.status_code == 405 and r.headers["allow"] == "GET", r.headers
        assert r.json()["error"]["type"] == "invalid_request_error"
    finally:
        server.stop()


# ---------------------------------------------------------------------- a task server too


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A tiny text classifier trained on generated reviews (tests/finetune/test_finetune.py)."""
    from modelworks.config import load_config
    from modelworks.pipeline import stage_functions
    from tests.finetune.test_finetune import overrides, write_reviews

    tmp = tmp_path_factory.mktemp("classifier")
    data = write_reviews(tmp / "reviews.csv", n=120)
    cfg = load_config(None, overrides(tmp, "reviews", data, **{"pretrain.steps": 4}))
    for stage in ("collect", "preprocess", "pretrain"):
        stage_functions()[stage](cfg)
    return cfg.run_dir


@pytest.mark.slow
def test_a_text_classification_server_matches_its_schema(classifier_run):
    from tests.conftest import served

    with served(classifier_run, f"serve.api_keys=[{KEY}]", "threads=1") as (base, _):
        with_key = fuzz(base, max_examples=40, headers={"Authorization": f"Bearer {KEY}"})
        without = fuzz(base, max_examples=3)
    assert {"POST /v1/classify", "POST /v1/explain"} <= set(with_key)
    _check_totals(with_key, at_least=150)
    for label, counts in without.items():
        assert set(counts) == ({401} if " /v1/" in label else {200}), (label, counts)
    _report("text classification, keys on, with the key", with_key)
    _report("text classification, keys on, no key", without)
