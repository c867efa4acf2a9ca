"""What the server answers, for its OpenAPI schema (/openapi.json, /docs).

FastAPI documents a route's request from its pydantic model but knows nothing of our answers: by
default every 200 is "any JSON" and every route may return a 422, which we never send (a bad
request is a 400 in the OpenAI error shape). The response models here are documentation only
(`responses=` on a route, so nothing is filtered out of what a handler returns), and
`document_errors` rewrites the generated schema once: the 422s become 400s, and the answers the
guard gives before any route runs (401 without a key, 413, 429) are added where they can happen,
with 404 and 503 on every POST (task routes too: each checks the model name and that it loaded).
tests/serve/test_schemathesis.py holds the server to this schema with generated requests.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ------------------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, as OpenAI sends it."""

    error: ErrorDetail


_WHY = {
    400: "bad request: invalid JSON, a wrong field, a prompt past the context",
    401: "missing or wrong API key (only when keys are set)",
    404: "no such model on this server",
    413: "request body over serve.max_body_bytes",
    429: "more than serve.max_concurrent_requests in flight; see Retry-After",
    503: "the model is still loading, or the request ran past serve.request_timeout",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error status codes, each in the OpenAI error shape."""
    return {code: {"model": ErrorResponse, "description": _WHY[code]} for code in codes}


def _event_stream(chunk: type[BaseModel]) -> dict[str, Any]:
    """A server-sent event stream whose `data:` lines are `chunk`s in JSON, then `[DONE]`."""
    return {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "string",
                        "description": f"a {chunk.__name__} (or an error) in JSON, "
                        "or [DONE] to end the stream",
                        "contentMediaType": "application/json",
                    },
                    "event": {"type": "string"},
                },
            }
        }
    }


def answers(
    model: type[BaseModel], chunk: type[BaseModel] | None = None, codes: tuple = (404, 503)
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: a 200 with `model` in JSON (or, with `"stream": true`, a stream
    of `chunk`s when `chunk` is given), and these error codes."""
    ok: dict[str, Any] = {"model": model}
    if chunk is not None:
        ok["content"] = _event_stream(chunk)
    return {200: ok, **errors(*codes)}


# -------------------------------------------------------------------------------- responses


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Health(BaseModel):
    status: Literal["ok"]


class ModelCard(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class LegacyLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int = Field(ge=0)
    text: str
    logprobs: LegacyLogprobs | None
    finish_reason: FinishReason | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class ChatMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int = Field(ge=0)
    message: ChatMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = Field(ge=0)
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int = Field(ge=0)
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Tokenized(BaseModel):
    tokens: list[int]
    count: int = Field(ge=0)
    max_model_len: int = Field(ge=1)


class Detokenized(BaseModel):
    prompt: str


class Explanation(_Open):
    object: Literal["explanation"]
    model: str


# ------------------------------------------------------------------------- the whole schema


def document_errors(schema: dict[str, Any], keys: bool) -> dict[str, Any]:
    """Rewrite FastAPI's generated `schema` in place to say what the server really answers:
    400 (not 422) for a request that fails validation; 413 and 429 on every POST (the guard
    checks them before any route), and 404 (no such model) and 503 (still loading); 401 and a
    bearer scheme on /v1/* when API keys are set."""
    ref = {"$ref": "#/components/schemas/ErrorResponse"}

    def error(code: int) -> dict[str, Any]:
        return {"description": _WHY[code], "content": {"application/json": {"schema": ref}}}

    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    own = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in own.pop("$defs").items():
        schemas.setdefault(name, sub)
    schemas.setdefault("ErrorResponse", own)
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            if responses.pop("422", None) is not None or method == "post":
                responses.setdefault("400", error(400))
            if method == "post":  # every model endpoint (task ones too) checks model and loading
                for code in (404, 413, 429, 503):
                    responses.setdefault(str(code), error(code))
            if keys and path.startswith("/v1/"):
                responses.setdefault("401", error(401))
                op["security"] = [{"bearer": []}]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if keys:
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
        }
    return schema
