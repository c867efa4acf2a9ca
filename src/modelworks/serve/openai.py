"""OpenAI-shaped request schemas and errors (the chat template: modelworks/chat_template.py).

Requests accept (and ignore) fields we do not use, as OpenAI clients send many; a field we do use
with a wrong type or value is a 400 naming it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from modelworks.chat_template import (  # noqa: F401  (public here too)
    DEFAULT_CHAT_STOP,
    DEFAULT_CHAT_TEMPLATE,
    engine_chat_text,
    render_chat,
)


class _Request(BaseModel):
    # OpenAI clients send fields we do not use; a field we use takes only its JSON type (strict:
    # no true for 1, 1.5 or "2" for an int), as the OpenAPI schema says
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, description="0 or -1: no top-k cut")
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return [s for s in stop if s]


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        ..., description="text, texts, token ids, or lists of token ids"
    )
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)


class ContentPart(_Request):
    type: Literal["text"] = "text"
    text: str


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | list[int] | list[str] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"


class ExplainRequest(_Request):
    model: str | None = None
    input: str = Field(..., description="the text whose next-token prediction is explained")


class TokenizeRequest(_Request):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
