"""Benchmark tasks, generated offline from a seed or read from the user's files.

    task = get_task("mqar", vocab_size=256, seq_len=64, num_pairs=4)
    list_tasks()        # the names, grouped by family
    task_options("mqar")  # the options get_task accepts

Each task module registers its classes in `rnnzoo.registry.TASKS` with the
`task(...)` decorator of tasks/base.py (which also holds the protocol); the
registry imports every module of this package on first read.

The file tasks read the user's data (formats in tasks/files.py and
tasks/regression.py): `text` (bits per character), `classify` (one label per
sequence), `regress` (one float, or a vector, per sequence) and `forecast` (a
CSV time series, with its baselines).

Your own task, from Python: subclass `Task`, fill in its attributes and
`sample` (a `Batch`: inputs (B, T) tokens or (B, T, input_dim) floats, targets
per position, IGNORE where none), and register it with `task` under a new name
and one of the families of `tasks.base.FAMILIES`. Any code that imports the
module then trains on it by name (`train(TrainConfig(task=...))`, `get_task`):

    import numpy as np
    from rnnzoo.tasks.base import IGNORE, Task, pick_length, task, tokens_batch

    @task("first_token", family="recall")
    class FirstToken(Task):
        # the first token, recalled at the last step
        vocab_size = output_dim = 10
        chance = 0.1
        train_lengths, test_lengths = (4, 16), (16, 64)

        def sample(self, rng, batch_size, length=None, split="train"):
            x = rng.integers(0, 10, size=(batch_size, pick_length(rng, self, length)))
            y = np.full_like(x, IGNORE)
            y[:, -1] = x[:, 0]
            return tokens_batch(x, y)

Regression tasks set `kind = "regress"`, `metric = "mse"`, `higher_is_better =
False` and return float targets (B, T, output_dim) with a `mask` (B, T) of the
positions that count (tasks.files.last_step_regression builds one). A task may
also define `baselines()` (name -> {metric: value} on its whole test split) and
`test_batches(batch_size)` (its whole test split, once) where it has a finite one.
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
