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
        options=Options,                # optional: the task's knobs, the `tasks.<name>:` section
        test_data=TestData(...),        # optional: `evaluate RUN --data` on new data
        predict=predict,                # optional, `modelworks predict RUN --data FILE --out
                                        #   OUT`: (run_dir, data, out, reporter) -> summary
    )

`ckpt` is the checkpoint evaluate scores (evaluate/checkpoint.py). `serve_routes` adds the task's
HTTP endpoints to a FastAPI app (serve/app.py has the helpers: background loading, /v1/models,
OpenAI-shaped errors). A task without `setup_finetune` cannot be fine-tuned, one without
`serve_routes` cannot be served; the stages say so in one line.

A task's knobs live in its own config section, `tasks.<name>:` (e.g. `tasks.translation.beam_size`),
declared as a `TaskOptions` model in the task's module. Each knob names the stages it feeds with
`option(...)`, so changing `beam_size` re-runs evaluate but not preprocess. `TASK.options_from(cfg)`
(in the task's own module; `tasks.task_options(cfg)` elsewhere) gives the validated section;
`modelworks <stage> --help` lists the knobs that feed the stage.

The registry (tasks/__init__.py) maps names to modules; a config may also name a task by the
import path of a module that defines `TASK` (`task: my_package.my_task`), so a project's own task
needs no change to modelworks.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelworks.errors import ConfigError

HOOKS = ("prepare", "setup_training", "evaluate")
OPTIONAL_HOOKS = ("setup_finetune", "save_finetuned", "serve_routes", "predict")
# the stages a task option may feed: its value is part of those stages' config hash
OPTION_STAGES = ("preprocess", "pretrain", "finetune", "evaluate", "serve")
TRAIN = ("pretrain", "finetune")


class TaskOptions(BaseModel):
    """A task's config section (`tasks.<name>:`): subclass it, one `option(...)` per knob."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def stages_of(cls, key: str) -> tuple[str, ...]:
        extra = cls.model_fields[key].json_schema_extra
        return tuple(extra["stages"]) if isinstance(extra, dict) else ()

    def for_stage(self, stage: str) -> dict[str, Any]:
        """The knobs that feed `stage`, as plain values (what its config hash covers)."""
        data = self.model_dump(mode="json")
        return {k: data[k] for k in type(self).model_fields if stage in self.stages_of(k)}


def option(default: Any, *, stage: str | tuple[str, ...], description: str, **constraints: Any):
    """A task knob: a pydantic Field with a default, a one-line description (for --help) and the
    stage(s) whose result depends on it (`TRAIN` = pretrain and finetune)."""
    stages = (stage,) if isinstance(stage, str) else tuple(stage)
    unknown = [s for s in stages if s not in OPTION_STAGES]
    if unknown or not stages:
        raise ConfigError(f"option stage {unknown or stage!r}: one of {', '.join(OPTION_STAGES)}")
    factory = constraints.pop("default_factory", None)
    extra = {"stages": list(stages)}
    if factory is not None:
        return Field(
            default_factory=factory, description=description, json_schema_extra=extra, **constraints
        )
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def tunes_only(cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """`setup_training` of a task that only tunes a pretrained model (dpo, grpo): pretrain is
    refused in one line naming what to do instead."""
    raise ConfigError(
        f"task {cfg.task!r} tunes a pretrained model: set finetune.from and run finetune, "
        "not pretrain"
    )


@dataclass(frozen=True)
class TestData:
    """How `evaluate RUN --data SOURCE` (evaluate/score.py) scores a finished run on new data:
    the collection the task reads (`documents`, `images`, `chats`...; the collect stage's
    `<collection>.parquet`), which sources give it (for the error), and `prepare(run_cfg,
    run_dir, scratch_run_dir, scratch_preprocess_dir) -> stats`, which writes the new data as
    the scratch run's test split (the run's own preprocess files are linked there already)."""

    collection: str
    needs: str
    prepare: Callable[..., dict]


@dataclass(frozen=True)
class Task:
    name: str
    prepare: Callable[..., dict]
    setup_training: Callable[..., Any]
    evaluate: Callable[..., tuple]
    setup_finetune: Callable[..., tuple] | None = None
    save_finetuned: Callable[..., None] | None = None
    serve_routes: Callable[..., None] | None = None
    predict: Callable[..., dict] | None = None
    options: type[TaskOptions] = TaskOptions
    test_data: TestData | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"Task(name={self.name!r}): a task needs a name")
        if not (isinstance(self.options, type) and issubclass(self.options, TaskOptions)):
            raise ConfigError(f"task {self.name!r}: options must be a TaskOptions subclass")
        untagged = [k for k in self.options.model_fields if not self.options.stages_of(k)]
        if untagged:
            raise ConfigError(
                f"task {self.name!r}: options {', '.join(untagged)} name no stage; "
                "declare them with tasks.base.option(..., stage=...)"
            )
        for f in fields(self):
            if f.name in ("name", "options", "test_data"):
                continue
            hook = getattr(self, f.name)
            if hook is None and f.name in OPTIONAL_HOOKS:
                continue
            if not callable(hook):
                raise ConfigError(
                    f"task {self.name!r}: {f.name} must be a function, not {type(hook).__name__}"
                )

    def options_from(self, cfg: Any) -> TaskOptions:
        """This task's validated section of `cfg` (`tasks.<name>:`), unset knobs at defaults."""
        return self.validate_options(cfg.tasks.get(self.name) or {})

    def validate_options(self, raw: Any) -> TaskOptions:
        where = f"tasks.{self.name}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a mapping of {self.name}'s options, not {raw!r}")
        try:
            return self.options.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join([where, *(str(p) for p in err["loc"])])
            if err["type"] != "extra_forbidden":
                raise ConfigError(f"{key} (got {err.get('input')!r}): {err['msg']}") from None
            names = list(self.options.model_fields)
            near = difflib.get_close_matches(str(err["loc"][-1]), names, n=1, cutoff=0.6)
            hint = (
                f"; did you mean '{where}.{near[0]}'?"
                if near
                else f"; {self.name}'s options: {', '.join(names) or 'none'}"
            )
            raise ConfigError(f"unknown key {key!r}{hint}") from None

    @property
    def can_finetune(self) -> bool:
        return self.setup_finetune is not None

    @property
    def can_serve(self) -> bool:
        return self.serve_routes is not None
