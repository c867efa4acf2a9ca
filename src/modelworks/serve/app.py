"""The HTTP server: a FastAPI app, OpenAI-compatible, over a batching `Engine`.

    modelworks serve runs/quickstart                 # http://127.0.0.1:8000
    curl 127.0.0.1:8000/v1/completions -H 'content-type: application/json' \
         -d '{"prompt": "The list", "max_tokens": 32}'

`create_app(cfg)` makes the app every server shares: /health, /v1/models, /metrics, OpenAI-shaped
errors, and a guard in front (API keys on /v1/*, body size limit, max concurrent requests).
`add_lm_routes(app, load)` adds the language-model endpoints (completions, chat, embeddings,
tokenize, detokenize); a task module adds its own with `serve_routes(app, run_dir, cfg)`. Models
load in a background thread, so /health answers 503 until they are ready.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from modelworks.config import ServeConfig
from modelworks.serve import schema as docs
from modelworks.serve.engine import Engine, Event, PromptTooLong, SamplingParams
from modelworks.serve.guard import Guard, api_keys
from modelworks.serve.metrics import Metrics
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
    error_body,
)

log = logging.getLogger("modelworks")
_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)


def create_app(cfg: ServeConfig | None = None, name: str = "model") -> FastAPI:
    cfg = cfg or ServeConfig()
    app = FastAPI(title="modelworks", version="0.1.0")
    app.state.cfg = cfg
    app.state.name = name  # the served model's name unless serve.model_name says otherwise
    app.state.metrics = Metrics(cfg.model_name or name)
    app.state.models = {}  # served model name -> /v1/models entry
    app.state.loading = set()  # what is still loading (health is 503 until empty)
    app.state.failed = {}  # what failed to load -> why

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return error_response(
                400, f"body is not valid JSON ({err.get('ctx', {}).get('error')})"
            )
        param = ".".join(str(p) for p in err["loc"] if p != "body")
        msg = err["msg"]
        return error_response(400, f"{param}: {msg}" if param else msg, param or None)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        detail = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "body is not valid JSON (or not UTF-8)"
        elif exc.status_code in (404, 405) and detail in ("Not Found", "Method Not Allowed"):
            detail = f"{request.method} {request.url.path}: no such endpoint on this server"
        return error_response(exc.status_code, detail, headers=exc.headers)  # 405: Allow

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.get("/health", responses=docs.answers(docs.Health, codes=(503,)))
    def health():
        if app.state.failed:
            return error_response(503, f"failed to load: {app.state.failed}")
        if app.state.loading:
            return error_response(503, "loading " + ", ".join(sorted(app.state.loading)))
        return {"status": "ok"}

    @app.get("/v1/models", responses=docs.answers(docs.ModelList, codes=()))
    def models():
        return {"object": "list", "data": list(app.state.models.values())}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        return PlainTextResponse(app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    # the web page (serve/ui/: static files only, StaticFiles refuses paths outside the folder)
    from pathlib import Path

    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    ui = Path(__file__).parent / "ui"
    app.mount("/ui", StaticFiles(directory=ui), name="ui")
    app.get("/", include_in_schema=False)(lambda: FileResponse(ui / "index.html"))

    app.add_middleware(Guard, cfg=cfg, metrics=app.state.metrics)

    def openapi():  # FastAPI's schema, then what the error handlers and the guard answer
        if app.openapi_schema is None:
            docs.document_errors(FastAPI.openapi(app), keys=bool(api_keys(cfg)))
        return app.openapi_schema

    app.openapi = openapi
    return app


def start_loading(app: FastAPI, what: str, load: Callable[[], None]) -> None:
    """Run `load()` in a background thread; /health answers 503 until it returns."""
    app.state.loading.add(what)

    def run():
        try:
            load()
        except Exception as e:
            log.exception("loading %s failed", what)
            app.state.failed[what] = str(e).splitlines()[0] if str(e) else type(e).__name__
        finally:
            app.state.loading.discard(what)

    threading.Thread(target=run, name=f"load-{what}", daemon=True).start()


def register_model(app: FastAPI, name: str, **info) -> None:
    app.state.models[name] = {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "modelworks",
        **info,
    }


def check_model(app: FastAPI, requested: str | None) -> None:
    if requested is not None and requested not in app.state.models:
        served = ", ".join(repr(m) for m in app.state.models) or "nothing yet"
        raise APIError(
            404,
            f"model {requested!r} does not exist; this server serves {served}",
            "model",
            "model_not_found",
        )


def serve_model(
    app: FastAPI,
    what: str,
    load: Callable[[], dict],
    name: str | Callable[[dict], str] | None = None,
    info: Callable[[dict], dict] | None = None,
) -> Callable[[str | None], dict]:
    """The one way a task serves a model: `load()` runs in the background (/health is 503 until
    it returns) and returns the task's state (model, tokenizer, labels...); the model is listed
    in /v1/models as `name` (or `name(state)`; default: serve.model_name or the run's name)
    with `info(state)`.
    Returns `ready(requested_model) -> state` (with `name`) for the endpoints: an OpenAI-shaped
    503 while the model loads, 404 when the request names another model. Requests and
    responses are pydantic models on the route (FastAPI turns a bad field into a 400 naming it)."""
    state: dict = {}
    name = name or app.state.cfg.model_name or app.state.name

    def run() -> None:
        loaded = load()
        served = name(loaded) if callable(name) else name
        register_model(app, served, **(info(loaded) if info else {}))
        state.update(loaded, name=served)

    start_loading(app, what, run)

    def ready(requested: str | None = None) -> dict:
        if not state:
            raise APIError(503, "the model is still loading; retry when /health is 200")
        check_model(app, requested)
        return state

    return ready


# ------------------------------------------------------------------------------ language model


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
        choices = [_Choice(engine, ids, req.echo) for ids, _ in jobs]
        _check_lengths(engine, jobs)
        events = _run(engine, jobs, cfg.request_timeout)
        if req.stream:
            return _sse(_completion_stream(head, choices, events, n_prompt, req))
        await _collect(events, choices, request)
        n_out = sum(c.n_tokens for c in choices)
        return {
            **head,
            "choices": [c.completion(i, req.logprobs is not None) for i, c in enumerate(choices)],
            "usage": _usage(n_prompt, n_out),
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
        choices = [_Choice(engine, ids, False) for _ in jobs]
        _check_lengths(engine, jobs)
        events = _run(engine, jobs, cfg.request_timeout)
        n_prompt = len(ids) * req.n
        if req.stream:
            return _sse(_chat_stream(head, choices, events, n_prompt, req))
        await _collect(events, choices, request)
        n_out = sum(c.n_tokens for c in choices)
        return {
            **head,
            "object": "chat.completion",
            "choices": [c.chat(i, req.logprobs) for i, c in enumerate(choices)],
            "usage": _usage(n_prompt, n_out),
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


def _usage(n_prompt: int, n_out: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}


async def _run(engine: Engine, jobs, timeout: float) -> AsyncIterator[list[tuple[int, Event]]]:
    """Submit every (ids, params) job to the engine; yield lists of (job index, event) until all
    finish: whatever arrived since the last yield, so a stream that falls behind the engine sends
    fewer, larger chunks. Leaving early (client gone, timeout, error) cancels what still runs."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    seqs = []
    try:
        for i, (ids, params) in enumerate(jobs):

            def push(ev, i=i):
                loop.call_soon_threadsafe(queue.put_nowait, (i, ev))

            try:
                seqs.append(engine.submit(ids, params, push))
            except PromptTooLong as e:
                raise APIError(400, str(e), "max_tokens", "context_length_exceeded") from None
        left, deadline = len(jobs), time.monotonic() + timeout
        while left:
            try:
                batch = [await asyncio.wait_for(queue.get(), deadline - time.monotonic())]
            except TimeoutError:
                raise APIError(
                    503,
                    f"the request took longer than serve.request_timeout={timeout:g} s",
                    None,
                    "timeout",
                ) from None
            while not queue.empty():
                batch.append(queue.get_nowait())
            for _, ev in batch:
                if ev.finish_reason == "error":
                    raise APIError(500, ev.text or "the engine failed on this request")
                left -= ev.finish_reason is not None
            yield batch
    finally:
        for s in seqs:
            s.cancel()


class _Choice:
    """Accumulates one choice's events: text, tokens, logprobs (legacy OpenAI shape)."""

    def __init__(self, engine: Engine, prompt_ids: list[int], echo: bool):
        self.engine, self.echo = engine, echo
        self.prompt = engine.decode(prompt_ids) if echo else ""
        self.prompt_ids = prompt_ids
        self.text, self.n_tokens, self.finish = "", 0, None
        self.lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        self._offset = 0

    def _tok(self, tid: int, logprob, top) -> None:
        s = self.engine.token_text(tid)
        self.lp["tokens"].append(s)
        self.lp["token_logprobs"].append(logprob)
        self.lp["top_logprobs"].append(
            None if top is None else {self.engine.token_text(t): v for t, v in top}
        )
        self.lp["text_offset"].append(self._offset)
        self._offset += len(s)

    def add(self, ev: Event) -> dict | None:
        """Take one event; returns the logprobs of what it added (for a stream chunk)."""
        start = len(self.lp["tokens"])
        if ev.prompt_logprobs is not None and self.echo:
            rows = ev.prompt_logprobs
            rows = [(None, None)] * (len(self.prompt_ids) - len(rows)) + rows
            for tid, (c, top) in zip(self.prompt_ids, rows, strict=True):
                self._tok(tid, c, top)
        if ev.token_id is not None:
            self.n_tokens += 1
            if ev.logprob is not None:
                self._tok(ev.token_id, ev.logprob, ev.top_logprobs or [])
        self.text += ev.text
        self.finish = ev.finish_reason or self.finish
        return {k: v[start:] for k, v in self.lp.items()}

    def completion(self, index: int, logprobs: bool) -> dict:
        return {
            "index": index,
            "text": self.prompt + self.text,
            "logprobs": self.lp if logprobs else None,
            "finish_reason": self._reason(),
        }

    def _reason(self) -> str | None:
        return "length" if self.finish in ("abort", None) else self.finish

    def chat_logprobs(self, start: int = 0) -> dict:
        content = []
        for s, lp, top in zip(
            self.lp["tokens"][start:],
            self.lp["token_logprobs"][start:],
            self.lp["top_logprobs"][start:],
            strict=True,
        ):
            alts = [
                {"token": t, "logprob": v, "bytes": list(t.encode())}
                for t, v in (top or {}).items()
            ]
            content.append(
                {"token": s, "logprob": lp, "bytes": list(s.encode()), "top_logprobs": alts}
            )
        return {"content": content}

    def chat(self, index: int, logprobs: bool) -> dict:
        return {
            "index": index,
            "message": {"role": "assistant", "content": self.text},
            "logprobs": self.chat_logprobs() if logprobs else None,
            "finish_reason": self._reason(),
        }


def _sse(gen: AsyncIterator[str]) -> StreamingResponse:
    async def body():
        try:
            async for chunk in gen:
                yield chunk
        except APIError as e:  # headers are sent: report in the stream, as OpenAI does
            yield _data(error_body(e.message, "server_error", e.param, e.code))
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


# Characters JSON leaves raw in strings that str.splitlines-style clients (httpx's iter_lines,
# for one) take for line breaks, cutting an SSE data line in two: sent as JSON escapes instead.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _data(obj) -> str:
    import json

    return f"data: {json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"


async def _collect(events, choices: list[_Choice], request: Request) -> None:
    """Feed every event to its choice; a client that hangs up stops (and frees) the work."""
    try:
        async for batch in events:
            for i, ev in batch:
                choices[i].add(ev)
            if await request.is_disconnected():
                raise APIError(499, "client disconnected")
    finally:
        await events.aclose()


def _merge(choices: list[_Choice], batch):
    """Feed a batch of events to their choices; per choice (in first-seen order): its index,
    where its new logprobs start, its new text, and whether it finished."""
    out: dict[int, list] = {}
    for i, ev in batch:
        if i not in out:
            out[i] = [i, len(choices[i].lp["tokens"]), "", False]
        choices[i].add(ev)
        out[i][2] += ev.text
        out[i][3] = out[i][3] or ev.finish_reason is not None
    return list(out.values())


async def _completion_stream(head, choices, events, n_prompt, req) -> AsyncIterator[str]:
    try:
        if req.echo:
            for i, c in enumerate(choices):
                chunk = {"index": i, "text": c.prompt, "logprobs": None, "finish_reason": None}
                yield _data({**head, "choices": [chunk]})
        async for batch in events:
            for i, start, text, finished in _merge(choices, batch):
                c = choices[i]
                lp = {k: v[start:] for k, v in c.lp.items()}
                has_lp = req.logprobs is not None and lp["tokens"]
                if not text and not finished and not has_lp:
                    continue  # text held back (a partial character or a possible stop string)
                chunk = {
                    "index": i,
                    "text": text,
                    "logprobs": lp if req.logprobs is not None else None,
                    "finish_reason": c._reason() if finished else None,
                }
                yield _data({**head, "choices": [chunk]})
        if req.stream_options and req.stream_options.include_usage:
            n_out = sum(c.n_tokens for c in choices)
            yield _data({**head, "choices": [], "usage": _usage(n_prompt, n_out)})
    finally:
        await events.aclose()


async def _chat_stream(head, choices, events, n_prompt, req) -> AsyncIterator[str]:
    head = {**head, "object": "chat.completion.chunk"}
    try:
        for i in range(len(choices)):
            delta = {"role": "assistant", "content": ""}
            yield _data({**head, "choices": [{"index": i, "delta": delta, "finish_reason": None}]})
        async for batch in events:
            for i, start, text, finished in _merge(choices, batch):
                c = choices[i]
                if not text and not finished:
                    continue
                chunk = {
                    "index": i,
                    "delta": {"content": text} if text else {},
                    "logprobs": c.chat_logprobs(start) if req.logprobs else None,
                    "finish_reason": c._reason() if finished else None,
                }
                yield _data({**head, "choices": [chunk]})
        if req.stream_options and req.stream_options.include_usage:
            n_out = sum(c.n_tokens for c in choices)
            yield _data({**head, "choices": [], "usage": _usage(n_prompt, n_out)})
    finally:
        await events.aclose()
