"""OpenAI-shaped request schemas, errors, and the default chat template.

Requests accept (and ignore) fields we do not use, as OpenAI clients send many; a field we do use
with a wrong type or value is a 400 naming it.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The template used when the model folder has none (our own runs): plain text, one turn per
# paragraph. Generation stops at the next "\n\nUser:" so the model does not answer for the user.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' or m.role == 'developer' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}User: {{ m.content }}\n\n"
    "{% else %}Assistant: {{ m.content }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_CHAT_STOP = "\n\nUser:"


def render_chat(
    template: str | None,
    messages: list[dict],
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """A conversation as the prompt text `template` (None: the default) makes of it, rendered
    in Jinja's sandbox as Hugging Face does; a template's refusal is a jinja2.TemplateError."""
    return _compiled(template or DEFAULT_CHAT_TEMPLATE).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
    """Compiling costs ~1000x a render: a fine-tune renders every conversation several times."""
    import time

    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):  # Hugging Face templates call this to refuse a conversation
        raise jinja2.TemplateError(message)

    env.globals.update(raise_exception=raise_exception, strftime_now=time.strftime)
    return env.from_string(template)


def engine_chat_text(engine, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """`render_chat` with a serve.engine.Engine's template and start / end token texts."""
    eos = engine.token_text(min(engine.eos)) if engine.eos else ""
    return render_chat(
        engine.chat_template, messages, add_generation_prompt, engine.token_text(engine.eot), eos
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
