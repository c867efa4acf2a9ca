"""The HTTP server: a FastAPI app, OpenAI-compatible, over a batching `Engine`.

    modelworks serve runs/quickstart                 # http://127.0.0.1:8000
    curl 127.0.0.1:8000/v1/completions -H 'content-type: application/json' \
         -d '{"prompt": "The list", "max_tokens": 32}'

`create_app(cfg)` makes the app every server shares: /health, /v1/models, /metrics, OpenAI-shaped
errors, and a guard in front (API keys on /v1/*, body size limit, max concurrent requests).
`serve_model(app, what, load)` is how a task serves its model (background loading, 503 until
ready, 404 for another model name); `serve/lm_routes.py` adds the language-model endpoints
(completions, chat, embeddings, tokenize, detokenize, explain). A task adds its own in its
`serve_routes(app, run_dir, cfg, device)` (tasks/base.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from modelworks.config import ServeConfig
from modelworks.serve import schema as docs
from modelworks.serve.guard import Guard, api_keys
from modelworks.serve.metrics import Metrics
from modelworks.serve.openai import (
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
