"""Tasks: each module owns its data -> batches, head, loss, metrics, report and endpoints for one
problem, and declares them as `TASK = Task(...)` (the contract: tasks/base.py).

Adding a task: a module here that defines `TASK`, and its name below. A project's own task needs
neither: `task: my_package.my_task` names any importable module that defines `TASK`.
"""

from __future__ import annotations

import importlib
from typing import Any

from modelworks.errors import ConfigError
from modelworks.tasks.base import Task, TaskOptions

TASKS = {
    "language_modeling": "modelworks.tasks.language_modeling",
    "image_classification": "modelworks.tasks.image_classification",
    "text_classification": "modelworks.tasks.text_classification",
    "recommendation": "modelworks.tasks.recommendation",
    "translation": "modelworks.tasks.translation",
    "chat": "modelworks.tasks.chat",
    "image_generation": "modelworks.tasks.image_generation",
    "user_behaviour": "modelworks.tasks.user_behaviour",
    "dpo": "modelworks.tasks.dpo",
    "grpo": "modelworks.tasks.grpo",
    "object_detection": "modelworks.tasks.object_detection",
}


def get_task(name: str) -> Task:
    """The Task registered as `name`, or defined as `TASK` by the module `name` names."""
    path = TASKS.get(name) or (name if "." in name else None)
    if path is None:
        raise ConfigError(
            f"task {name!r} is not a known task; known: {', '.join(sorted(TASKS))} "
            "(or the import path of a module that defines TASK = Task(...))"
        )
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name is None or not path.startswith(e.name):
            raise  # the task module exists but something it imports does not
        raise ConfigError(f"task {name!r}: no module {path!r} can be imported") from None
    task = getattr(module, "TASK", None)
    if not isinstance(task, Task):
        raise ConfigError(f"task {name!r}: module {path} defines no TASK = Task(...)")
    if name in TASKS and task.name != name:
        raise ConfigError(f"task {name!r}: {path} declares itself as {task.name!r}")
    return task


def task_options(cfg: Any, name: str | None = None) -> TaskOptions:
    """The validated `tasks.<name>:` section of `cfg` (the config's own task by default), every
    knob the section leaves out at its default."""
    return get_task(name or cfg.task).options_from(cfg)


def stage_options(cfg: Any, stage: str) -> dict[str, Any]:
    """The config's task knobs that feed `stage` (part of its hash), as {"tasks.NAME": {...}};
    empty when the task has none for this stage."""
    if stage == "collect":  # a source drawn with the run's seed: a new seed, new data
        seeded = any(getattr(s, "uses_run_seed", False) for s in cfg.collect.sources)
        return {"seed": cfg.seed} if seeded else {}
    task = get_task(cfg.task)
    values = task.options_from(cfg).for_stage(stage)
    return {f"tasks.{task.name}": values} if values else {}


def check_task_config(cfg: Any) -> Task:
    """The config's task, with every `tasks.<name>:` section it holds validated: a section for
    a task that does not exist, or a knob its task does not have, fails in one line."""
    task = get_task(cfg.task)
    for name, raw in cfg.tasks.items():
        try:
            other = task if name in (cfg.task, task.name) else get_task(name)
        except ConfigError as e:
            raise ConfigError(f"tasks.{name}: {e}") from None
        other.validate_options(raw or {})
    return task


def option_rows() -> list[tuple[str, Any, str, str]]:
    """(key, default, type, description) of every registered task's options, for --help."""
    rows = []
    for name in TASKS:
        options = get_task(name).options
        for key, field in options.model_fields.items():
            default = field.get_default(call_default_factory=True)
            ann = field.annotation
            type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
            stages = "/".join(options.stages_of(key))
            rows.append(
                (f"tasks.{name}.{key}", default, type_name, f"{field.description} [{stages}]")
            )
    return rows
