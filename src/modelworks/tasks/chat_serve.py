"""Serving a chat run: its engine with the run's chat template, and the OpenAI endpoints
(tasks/chat.py has the task)."""

from __future__ import annotations

import json
from pathlib import Path

from modelworks.artifacts import final_model_dir, tokenizer_path
from modelworks.chat_template import (  # noqa: F401  (CHAT_TEMPLATE: public here too)
    DEFAULT_CHAT_STOP,
    render_chat,
)
from modelworks.chat_template import (
    SFT_CHAT_TEMPLATE as CHAT_TEMPLATE,
)
from modelworks.config import ConfigError


def load_chat_engine(
    target: str | Path,
    device: str = "auto",
    name: str | None = None,
    weights: str | Path | None = None,
    **kw,
):
    """A serve.engine.Engine with its chat template for a chat run, a chat model folder (a
    fine-tune's finetune/), any run, or a Hugging Face folder; `engine.chat_stop` lists stop
    strings that end the assistant's turn. `weights`: a checkpoint folder of the run to load
    instead of its final model (evaluate's choice)."""
    from modelworks.chat_template import run_chat_template
    from modelworks.models.catalogue import resolve_target
    from modelworks.models.gguf import is_gguf
    from modelworks.models.hf import is_hf_folder
    from modelworks.preprocess.tokenizer import load_tokenizer
    from modelworks.runtime import resolve_device
    from modelworks.serve.engine import Engine
    from modelworks.train.checkpoint import load_model

    given, target = Path(target), resolve_target(target)  # a ready model: its cached file
    if is_gguf(target):  # its own template, start and end tokens
        engine = Engine.from_gguf(target, device, name or given.stem, **kw)
        engine.chat_stop = [] if engine.chat_template else [DEFAULT_CHAT_STOP]
        return engine
    if not target.is_dir():
        raise ConfigError(
            f"{target}: no such folder (a run, a model or a Hugging Face folder), .gguf file "
            "or ready model (`modelworks pull` lists them)"
        )
    if is_hf_folder(target):
        engine = Engine.from_hf(target, device, name, **kw)
        engine.chat_stop = [] if engine.chat_template else [DEFAULT_CHAT_STOP]
        return engine
    is_model = (target / "chat.json").is_file()
    model_dir = target if is_model else final_model_dir(target)
    if (model_dir / "chat.json").is_file():
        specials = json.loads((model_dir / "chat.json").read_text())
        tok = load_tokenizer(model_dir / "tokenizer.json" if is_model else tokenizer_path(target))
        engine = Engine(
            load_model(weights or model_dir, resolve_device(device)),
            tok,
            name or (target.parent.name if is_model else target.name),
            specials["bos_id"],
            set(specials["eos_ids"]),
            (model_dir / "chat_template.jinja").read_text(),
            **{"add_start": specials.get("add_bos", True), **kw},  # older runs: no add_bos
        )
        engine.chat_stop = specials["stop"]
        return engine
    engine = Engine.from_run(target, device, name, weights, **kw)  # a run without chat SFT
    engine.chat_template = run_chat_template(target)
    engine.chat_stop = [DEFAULT_CHAT_STOP] if engine.chat_template in (None, CHAT_TEMPLATE) else []
    return engine


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    """`modelworks serve` hook: the OpenAI endpoints (chat included, with the run's template)."""
    from modelworks.serve.engine import engine_options
    from modelworks.serve.lm_routes import add_lm_routes

    add_lm_routes(
        app, lambda: load_chat_engine(run_dir, device, cfg.model_name, **engine_options(cfg))
    )
