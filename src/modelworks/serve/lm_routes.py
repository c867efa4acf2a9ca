"""The OpenAI language-model endpoints over a batching `Engine`: /v1/completions and
/v1/chat/completions (streaming as SSE, usage, logprobs, echo, stop strings, n), /v1/embeddings,
/tokenize, /detokenize and /v1/explain. `add_lm_routes(app, load)` adds them to an app made by
`serve.app.create_app`; the engine loads in the background through `serve_model`.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from modelworks.config import ServeConfig
from modelworks.serve import schema as docs
from modelworks.serve.app import APIError, serve_model
from modelworks.serve.engine import Engine, PromptTooLong
from modelworks.serve.openai import (
    DEFAULT_CHAT_STOP,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ExplainRequest,
    Message,
    TokenizeRequest,
    engine_chat_text,
)
from modelworks.serve.sampling import SamplingParams
from modelworks.serve.streaming import (
    Choice,
    chat_stream,
    collect,
    completion_stream,
    run_jobs,
    sse_response,
    usage,
)

log = logging.getLogger("modelworks")


def add_lm_routes(app: FastAPI, load: Callable[[], Engine]) -> Callable[[str | None], dict]:
    """The OpenAI endpoints over the Engine that `load()` returns (called in the background);
    returns `serve_model`'s `ready` (state: `engine`), for a task's own endpoints on it."""
    cfg: ServeConfig = app.state.cfg

    def _load() -> dict:
        engine = load()
        engine.metrics = app.state.metrics
        if cfg.model_name:
            engine.name = cfg.model_name
        app.state.metrics.labels = f'model_name="{engine.name}"'
        return {"engine": engine}

    ready = serve_model(
        app,
        "model",
        _load,
        name=lambda st: st["engine"].name,
        info=lambda st: {"max_model_len": st["engine"].context_len},
    )

    def engine_for(model: str | None) -> Engine:
        return ready(model)["engine"]

    @app.post("/v1/completions", responses=docs.answers(docs.Completion, docs.CompletionChunk))
    async def completions(req: CompletionRequest, request: Request):
        engine = engine_for(req.model)
        prompts = _prompts(engine, req.prompt)
        max_tokens = cfg.max_tokens if req.max_tokens is None else req.max_tokens
        if req.echo and req.stream and req.logprobs is not None:
            raise APIError(400, "echo with logprobs is not supported when streaming", "echo")
        jobs = []
        for ids in prompts:
            for j in range(req.n):
                params = _params(req, max_tokens, j, req.stops())
                params.logprobs = req.logprobs
                params.prompt_logprobs = req.echo and req.logprobs is not None
                jobs.append((ids, params))
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": engine.name}
        n_prompt = sum(len(ids) for ids in prompts) * req.n
        choices = [Choice(engine, ids, req.echo) for ids, _ in jobs]
        _check_lengths(engine, jobs)
        events = run_jobs(engine, jobs, cfg.request_timeout)
        if req.stream:
            return sse_response(completion_stream(head, choices, events, n_prompt, req))
        await collect(events, choices, request)
        n_out = sum(c.n_tokens for c in choices)
        return {
            **head,
            "choices": [c.completion(i, req.logprobs is not None) for i, c in enumerate(choices)],
            "usage": usage(n_prompt, n_out),
        }

    @app.post(
        "/v1/chat/completions",
        responses=docs.answers(docs.ChatCompletion, docs.ChatCompletionChunk),
    )
    async def chat(req: ChatRequest, request: Request):
        engine = engine_for(req.model)
        ids = _chat_ids(engine, req.messages)
        stop = req.stops()
        if engine.chat_template is None:
            stop.append(DEFAULT_CHAT_STOP)
        stop += getattr(engine, "chat_stop", [])  # a chat run's user-turn marker (tasks/chat.py)
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is None:  # as OpenAI: whatever the context leaves
            max_tokens = max(1, engine.context_len - len(ids) - 1)
        jobs = []
        for j in range(req.n):
            params = _params(req, max_tokens, j, stop)
            params.logprobs = (req.top_logprobs or 0) if req.logprobs else None
            jobs.append((ids, params))
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": engine.name}
        choices = [Choice(engine, ids, False) for _ in jobs]
        _check_lengths(engine, jobs)
        events = run_jobs(engine, jobs, cfg.request_timeout)
        n_prompt = len(ids) * req.n
        if req.stream:
            return sse_response(chat_stream(head, choices, events, n_prompt, req))
        await collect(events, choices, request)
        n_out = sum(c.n_tokens for c in choices)
        return {
            **head,
            "object": "chat.completion",
            "choices": [c.chat(i, req.logprobs) for i, c in enumerate(choices)],
            "usage": usage(n_prompt, n_out),
        }

    @app.post("/v1/embeddings", responses=docs.answers(docs.EmbeddingList))
    async def embeddings(req: EmbeddingRequest):
        engine = engine_for(req.model)
        inputs = _prompts(engine, req.input)
        for i, ids in enumerate(inputs):
            if len(ids) + 1 > engine.context_len:
                raise APIError(
                    400,
                    f"input {i} has {len(ids)} tokens, beyond the model's context of "
                    f"{engine.context_len} (one is reserved for the start token)",
                    "input",
                    "context_length_exceeded",
                )
        data = []
        for i, ids in enumerate(inputs):
            vec = await run_in_threadpool(engine.embed, ids)
            if req.encoding_format == "base64":
                vec = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        n = sum(len(ids) for ids in inputs)
        return {
            "object": "list",
            "data": data,
            "model": engine.name,
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }

    @app.post("/tokenize", responses=docs.answers(docs.Tokenized))
    async def tokenize(req: TokenizeRequest):
        engine = engine_for(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "send exactly one of prompt or messages", "prompt")
        ids = (
            engine.encode(req.prompt) if req.prompt is not None else _chat_ids(engine, req.messages)
        )
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.context_len}

    @app.post("/detokenize", responses=docs.answers(docs.Detokenized))
    async def detokenize(req: DetokenizeRequest):
        engine = engine_for(req.model)
        _check_ids(engine, req.tokens, "tokens")
        return {"prompt": engine.decode(req.tokens)}

    explainer: dict = {}

    @app.post("/v1/explain", responses=docs.answers(docs.Explanation))
    def explain_text(req: ExplainRequest):  # sync: a worker thread, on a private model copy
        import copy

        from modelworks.evaluate.explain import explain

        engine = engine_for(req.model)
        text = req.input
        if not text.strip():
            raise APIError(400, "input: a non-empty string", "input")
        with engine._lock:  # the batching thread must not run the model while it is copied
            if "model" not in explainer:
                explainer["model"] = copy.deepcopy(engine.model).eval()
        result = explain(explainer["model"], engine.tokenizer, text, start_id=engine.eot)
        return {"object": "explanation", "model": engine.name, **result}

    return ready


def _params(req, max_tokens: int, j: int, stop: list[str]) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=max(0, req.top_k),
        seed=None if req.seed is None else req.seed + j,  # n choices differ, reproducibly
        stop=stop,
        ignore_eos=req.ignore_eos,
    )


def _prompts(engine: Engine, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        items = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [list(prompt)]
    else:
        items = list(prompt)
    if not items:
        raise APIError(400, "prompt: must not be an empty list", "prompt")
    out = []
    for item in items:
        ids = engine.encode(item) if isinstance(item, str) else list(item)
        _check_ids(engine, ids, "prompt")
        out.append(ids)
    return out


def _check_ids(engine: Engine, ids: list[int], param: str) -> None:
    vocab = engine.model.cfg.vocab_size
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise APIError(
            400, f"{param}: token id {bad[0]} is outside the vocabulary [0, {vocab})", param
        )


def _chat_ids(engine: Engine, messages: list[Message]) -> list[int]:
    import jinja2

    if not messages:
        raise APIError(400, "messages: must not be empty", "messages")
    try:
        text = engine_chat_text(engine, [{"role": m.role, "content": m.text()} for m in messages])
    except jinja2.TemplateError as e:
        raise APIError(400, f"messages: the chat template failed: {e}", "messages") from None
    return engine.tokenizer.encode(text, add_special_tokens=False).ids


def _check_lengths(engine: Engine, jobs) -> None:
    for ids, params in jobs:
        try:
            engine.check_length(len(ids), params.max_tokens)
        except PromptTooLong as e:
            raise APIError(400, str(e), "max_tokens", "context_length_exceeded") from None
