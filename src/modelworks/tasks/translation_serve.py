"""Translating with a translation run's decoder: greedy or beam search over prompts built with
the run's template (`translate`, also what evaluate scores), and `POST /v1/translate` next to the
OpenAI completion endpoints (tasks/translation.py has the task)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer
from torch import nn

from modelworks.errors import ConfigError
from modelworks.tasks.translation_data import format_prompt, prompt_template


def translate(
    model: nn.Module,
    tok: Tokenizer,
    eot: int,
    sources: list[str],
    template: str,
    max_new_tokens: int,
    beam_size: int = 1,
    length_penalty: float = 1.0,
) -> tuple[list[str], int]:
    """Greedy (beam_size 1) or beam-search translations, and how many prompts were cut to fit
    the context (they keep their last tokens)."""
    from modelworks.serve.beam import beam_search, greedy_decode

    keep = model.cfg.context_len - max_new_tokens - 1
    if keep < 1:
        raise ConfigError(
            f"evaluate.max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
            f"model's context of {model.cfg.context_len} tokens"
        )
    encs = tok.encode_batch([format_prompt(template, s) for s in sources], add_special_tokens=False)
    out, n_cut = [], 0
    for e in encs:
        ids = e.ids
        if len(ids) > keep:
            ids, n_cut = ids[-keep:], n_cut + 1
        prompt = [eot, *ids]
        if beam_size == 1:
            hyp = greedy_decode(model, prompt, eot, max_new_tokens)
        else:
            hyp = beam_search(model, prompt, eot, max_new_tokens, beam_size, length_penalty)[0]
        out.append(tok.decode(hyp.ids, skip_special_tokens=True).strip())
    return out, n_cut


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    input: str | list[str] = Field(..., description="a text, or a list of texts")
    beam_size: int = Field(1, ge=1, le=16, description="1: greedy; more: beam search")
    max_tokens: int | None = Field(None, ge=1, description="default: min(64, context / 2)")
    model: str | None = Field(None, description="served model name (optional)")


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    """`modelworks serve` hook: the OpenAI completion endpoints over the run's decoder, and
    POST /v1/translate ({"input": text or [texts], "beam_size": 1, "max_tokens": 64}) which
    formats each text with the run's prompt template and returns its translation."""
    from modelworks.serve.app import APIError
    from modelworks.serve.engine import Engine, engine_options
    from modelworks.serve.lm_routes import add_lm_routes

    run_dir = Path(run_dir)
    template = prompt_template(run_dir)
    ready = add_lm_routes(
        app, lambda: Engine.from_run(run_dir, device, cfg.model_name, **engine_options(cfg))
    )

    @app.post("/v1/translate")
    def translate_route(req: TranslateRequest):  # sync: FastAPI runs it in a worker thread
        engine = ready(req.model)["engine"]
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or not all(t.strip() for t in texts):
            raise APIError(400, "input: a non-empty string or list of non-empty strings", "input")
        beam = req.beam_size
        max_tokens = req.max_tokens or min(64, engine.context_len // 2)
        if max_tokens >= engine.context_len - 1:
            raise APIError(
                400, f"max_tokens: must be below the context of {engine.context_len}", "max_tokens"
            )
        with engine._lock:  # one forward pass at a time on the model
            out, n_cut = translate(
                engine.model, engine.tokenizer, engine.eot, [t.strip() for t in texts],
                template, max_tokens, beam,
            )  # fmt: skip
        data = [{"index": i, "translation": t} for i, t in enumerate(out)]
        return {"object": "list", "model": engine.name, "data": data, "truncated": n_cut}
