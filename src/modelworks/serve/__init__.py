"""deploy: serve a trained run, or a Hugging Face Llama-family folder, over HTTP.

    modelworks serve runs/quickstart                    # a run (language model or task model)
    modelworks serve runs/quickstart --serve.port 8080
    modelworks serve out/quickstart-hf                  # our HF export, or any local Llama folder
    modelworks serve smollm2-135m-instruct --port 8080  # a ready model (pull it first), or a .gguf

Language models get the OpenAI endpoints (serve/app.py); a task module adds its own endpoints by
defining `serve_routes(app, run_dir, cfg, device)` (see `build_app`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from modelworks.chat_template import run_chat_template
from modelworks.config import ServeConfig
from modelworks.errors import ModelworksError
from modelworks.models.hf import is_hf_folder
from modelworks.serve.engine import engine_options

__all__ = ["build_app", "engine_options", "is_hf_folder", "run_chat_template", "serve"]

log = logging.getLogger("modelworks")


def build_app(
    target: str | Path,
    cfg: ServeConfig | None = None,
    device: str = "auto",
    task: str = "language_modeling",
):
    """The FastAPI app for a run folder (of `task`) or a Hugging Face folder; models load in the
    background once the app exists (/health is 503 until then).

    A run's endpoints come from its task's `serve_routes(app, run_dir, cfg, device)` (the Task
    contract, tasks/base.py), language models included (tasks/language_modeling.py). Use
    `serve.app.start_loading(app, what, fn)` to load models in the background,
    `serve.app.register_model(app, name)` to list them in /v1/models, and raise
    `serve.app.APIError(status, message, param)` for OpenAI-shaped errors.
    Paths under /v1/ get API keys, body limits and the concurrency cap for free."""
    from modelworks.models.catalogue import resolve_target
    from modelworks.models.gguf import is_gguf
    from modelworks.serve.app import create_app
    from modelworks.serve.engine import Engine
    from modelworks.serve.lm_routes import add_lm_routes
    from modelworks.tasks import get_task

    cfg = cfg or ServeConfig()
    given = Path(target)
    target = resolve_target(target)  # a ready model's name: its file in the cache
    name = given.stem if is_gguf(target) else given.name
    app = create_app(cfg, name)
    if is_gguf(target):
        add_lm_routes(
            app,
            lambda: Engine.from_gguf(
                target, device, cfg.model_name or name, cfg.max_model_len, **engine_options(cfg)
            ),
        )
        return app
    if is_hf_folder(target):
        add_lm_routes(
            app, lambda: Engine.from_hf(target, device, cfg.model_name, **engine_options(cfg))
        )
        return app
    spec = get_task(task)
    if not spec.can_serve:
        raise ModelworksError(f"{target}: task {task!r} defines no endpoints (no serve_routes)")
    spec.serve_routes(app, target, cfg, device)
    return app


def serve(
    target: str | Path,
    cfg: ServeConfig | None = None,
    device: str = "auto",
    task: str = "language_modeling",
    threads: int = 0,
) -> None:
    """Serve a run or a Hugging Face folder until interrupted (`threads`: torch CPU threads,
    0 = torch's default)."""
    import torch
    import uvicorn

    if threads:
        torch.set_num_threads(threads)
    cfg = cfg or ServeConfig()
    app = build_app(target, cfg, device, task)
    log.info("serving %s on http://%s:%d", target, cfg.host, cfg.port)
    uvicorn.run(
        app, host=cfg.host, port=cfg.port, log_level="info", timeout_keep_alive=cfg.keep_alive_s
    )
