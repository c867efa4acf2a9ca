"""The HTTP server: FastAPI app over an `Engine`, OpenAI-compatible.

    modelworks serve runs/quickstart                 # http://127.0.0.1:8000
    curl 127.0.0.1:8000/v1/completions -H 'content-type: application/json' \
         -d '{"prompt": "The list", "max_tokens": 32}'
"""

from __future__ import annotations

import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modelworks.serve.engine import Engine, PromptTooLong
from modelworks.serve.openai import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
    error_body,
)


def create_app(engine: Engine, default_max_tokens: int = 16) -> FastAPI:
    app = FastAPI(title="modelworks", version="0.1.0")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"] if p != "body")
        return JSONResponse(
            error_body(f"{param}: {err['msg']}", "invalid_request_error", param or None),
            status_code=400,
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": engine.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "modelworks",
                    "max_model_len": engine.context_len,
                }
            ],
        }

    @app.post("/v1/completions")
    def completions(req: CompletionRequest):
        if req.stream:
            return _error("stream=true is not supported yet; send stream=false", "stream")
        if req.model is not None and req.model != engine.name:
            return _error(
                f"model {req.model!r} does not exist; this server serves {engine.name!r}",
                "model",
                404,
                "model_not_found",
            )
        prompts = _prompts(req.prompt)
        max_tokens = req.max_tokens or default_max_tokens
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        choices, n_prompt, n_out = [], 0, 0
        try:
            for prompt in prompts:
                engine.check_length(len(_ids(engine, prompt)), max_tokens)
            for p_index, prompt in enumerate(prompts):
                for j in range(req.n):
                    seed = None if req.seed is None else req.seed + j
                    g = engine.generate(
                        prompt, max_tokens, req.temperature, req.top_p, req.top_k, seed, stop
                    )
                    choices.append(
                        CompletionChoice(
                            index=p_index * req.n + j, text=g.text, finish_reason=g.finish_reason
                        )
                    )
                    n_out += len(g.token_ids)
                n_prompt += g.prompt_tokens
        except PromptTooLong as e:
            return _error(str(e), "prompt", 400, "context_length_exceeded")
        return CompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=engine.name,
            choices=choices,
            usage=Usage(
                prompt_tokens=n_prompt, completion_tokens=n_out, total_tokens=n_prompt + n_out
            ),
        )

    return app


def _prompts(prompt) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


def _ids(engine: Engine, prompt) -> list[int]:
    return engine.encode(prompt) if isinstance(prompt, str) else prompt


def _error(message: str, param: str, status: int = 400, code: str | None = None) -> JSONResponse:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return JSONResponse(error_body(message, kind, param, code), status_code=status)
