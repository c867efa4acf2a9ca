"""Tasks: each module owns its data -> batches, head, loss, metrics, report and endpoints for one
problem, and declares them as `TASK = Task(...)` (the contract: tasks/base.py).

Adding a task: a module here that defines `TASK`, and its name below. A project's own task needs
neither: `task: my_package.my_task` names any importable module that defines `TASK`.
"""

from __future__ import annotations

import importlib

from modelworks.errors import ConfigError
from modelworks.tasks.base import Task

TASKS = {
    "language_modeling": "modelworks.tasks.language_modeling",
    "image_classification": "modelworks.tasks.image_classification",
    "text_classification": "modelworks.tasks.text_classification",
    "recommendation": "modelworks.tasks.recommendation",
    "translation": "modelworks.tasks.translation",
    "chat": "modelworks.tasks.chat",
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
