"""Benchmark tasks, generated offline from a seed or read from the user's files.

    task = get_task("mqar", vocab_size=256, seq_len=64, num_pairs=4)
    list_tasks()        # the names, grouped by family
    task_options("mqar")  # the options get_task accepts

Each task module registers its classes in `rnnzoo.registry.TASKS` with the
`task(...)` decorator of tasks/base.py (which also holds the protocol); the
registry imports every module of this package on first read.
"""

from __future__ import annotations

import inspect

from rnnzoo.registry import TASKS
from rnnzoo.tasks.base import FAMILIES, IGNORE, Batch, Task


def list_tasks() -> list[str]:
    """Every registered task: by family (recall, state tracking, formal languages,
    hierarchical, files), then in the order its module defines them."""
    infos = sorted(TASKS.values(), key=lambda i: FAMILIES.index(i.family))
    return [i.name for i in infos]


def task_class(name: str) -> type:
    """The `Task` subclass behind `name` (a factory's class for S3, S5, A5)."""
    entry = TASKS[name].cls
    return getattr(entry, "func", entry)


def task_options(name: str) -> list[str]:
    """The constructor options of task `name` (its class's and its bases'), less any
    the entry fixes (S5's `group`)."""
    fixed = getattr(TASKS[name].cls, "keywords", {})
    names = []
    for cls in task_class(name).__mro__:
        if cls is not object and "__init__" in vars(cls):
            params = inspect.signature(cls.__init__).parameters.values()
            names += [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD
                      and p.name != "self" and p.name not in fixed and p.name not in names]
    return names


def get_task(name: str, **options) -> Task:
    """The task `name` built with `options`; unknown names and options list the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(list_tasks())}")
    unknown = [k for k in options if k not in task_options(name)]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {name!r}; it accepts "
                         f"{task_options(name)}")
    return TASKS[name].cls(**options)


__all__ = ["IGNORE", "Batch", "Task", "TASKS", "get_task", "list_tasks", "task_class",
           "task_options"]
