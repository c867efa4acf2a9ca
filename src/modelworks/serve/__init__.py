"""deploy: serve a trained run over HTTP (OpenAI-compatible).

modelworks serve runs/quickstart
modelworks serve runs/quickstart --serve.port 8080
"""

from __future__ import annotations

import logging
from pathlib import Path

from modelworks.config import ServeConfig

log = logging.getLogger("modelworks")


def serve(run_dir: str | Path, cfg: ServeConfig | None = None, device: str = "auto") -> None:
    """Load the run's model and serve it until interrupted."""
    import uvicorn

    from modelworks.serve.app import create_app
    from modelworks.serve.engine import Engine

    cfg = cfg or ServeConfig()
    engine = Engine.from_run(run_dir, device, cfg.model_name)
    app = create_app(engine, cfg.max_tokens)
    log.info("serving %s on http://%s:%d", engine.name, cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
