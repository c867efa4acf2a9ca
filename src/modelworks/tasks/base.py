"""The Task contract: what a task gives the stages, and nothing else is looked up.

A task module builds one `Task` from its functions and names it `TASK`:

    TASK = Task(
        name="text_classification",
        prepare=prepare,                # preprocess: (cfg, run_dir, out_dir, reporter) -> stats
        setup_training=setup_training,  # pretrain: (cfg, run_dir, device, rank=0, world=1)
                                        #   -> train.trainer.TrainSetup
        evaluate=evaluate,              # evaluate: (cfg, run_dir, out_dir, reporter, ckpt=None)
                                        #   -> (metrics, report sections, images)
        setup_finetune=setup_finetune,  # optional, finetune: (cfg, run_dir, device, base)
                                        #   -> (TrainSetup, info)
        save_finetuned=save_finetuned,  # optional: files that go with fine-tuned weights
        serve_routes=serve_routes,      # optional, serve: (app, run_dir, serve_cfg, device)
    )

`ckpt` is the checkpoint evaluate scores (evaluate/checkpoint.py). `serve_routes` adds the task's
HTTP endpoints to a FastAPI app (serve/app.py has the helpers: background loading, /v1/models,
OpenAI-shaped errors). A task without `setup_finetune` cannot be fine-tuned, one without
`serve_routes` cannot be served; the stages say so in one line.

The registry (tasks/__init__.py) maps names to modules; a config may also name a task by the
import path of a module that defines `TASK` (`task: my_package.my_task`), so a project's own task
needs no change to modelworks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from modelworks.errors import ConfigError

HOOKS = ("prepare", "setup_training", "evaluate")
OPTIONAL_HOOKS = ("setup_finetune", "save_finetuned", "serve_routes")


@dataclass(frozen=True)
class Task:
    name: str
    prepare: Callable[..., dict]
    setup_training: Callable[..., Any]
    evaluate: Callable[..., tuple]
    setup_finetune: Callable[..., tuple] | None = None
    save_finetuned: Callable[..., None] | None = None
    serve_routes: Callable[..., None] | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"Task(name={self.name!r}): a task needs a name")
        for f in fields(self):
            if f.name == "name":
                continue
            hook = getattr(self, f.name)
            if hook is None and f.name in OPTIONAL_HOOKS:
                continue
            if not callable(hook):
                raise ConfigError(
                    f"task {self.name!r}: {f.name} must be a function, not {type(hook).__name__}"
                )

    @property
    def can_finetune(self) -> bool:
        return self.setup_finetune is not None

    @property
    def can_serve(self) -> bool:
        return self.serve_routes is not None
