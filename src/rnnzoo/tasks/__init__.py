"""Benchmark tasks, generated offline from a seed or read from the user's files.

    task = get_task("mqar", vocab_size=256, seq_len=64, num_pairs=4)
    list_tasks()   # the names

See tasks/base.py for the protocol.
"""

from __future__ import annotations

import inspect

from rnnzoo.tasks.base import IGNORE, Batch, Task
from rnnzoo.tasks.files import Forecast, SequenceClassification, TextLM
from rnnzoo.tasks.formal import (
    BucketSort,
    CycleNavigation,
    DuplicateString,
    EvenPairs,
    ReverseString,
    StackManipulation,
)
from rnnzoo.tasks.listops import ListOps
from rnnzoo.tasks.recall import MQAR, InductionHeads, SelectiveCopying
from rnnzoo.tasks.state_tracking import (
    ModularArithmetic,
    ModularArithmeticBrackets,
    Parity,
    PermutationComposition,
)


def _group(name):
    def make(**options):
        return PermutationComposition(group=name, **options)
    make.__wrapped__ = PermutationComposition
    return make


TASKS = {
    "mqar": MQAR, "selective_copy": SelectiveCopying, "induction": InductionHeads,
    "parity": Parity, "mod_arith": ModularArithmetic,
    "mod_arith_brackets": ModularArithmeticBrackets,
    "s3": _group("s3"), "s5": _group("s5"), "a5": _group("a5"),
    "even_pairs": EvenPairs, "cycle_navigation": CycleNavigation,
    "stack_manipulation": StackManipulation, "reverse_string": ReverseString,
    "duplicate_string": DuplicateString, "bucket_sort": BucketSort,
    "listops": ListOps,
    "text": TextLM, "classify": SequenceClassification, "forecast": Forecast,
}


def list_tasks() -> list[str]:
    return list(TASKS)


def task_options(name: str) -> list[str]:
    factory = getattr(TASKS[name], "__wrapped__", TASKS[name])
    names = []
    for cls in factory.__mro__:
        if cls is not object and "__init__" in vars(cls):
            params = inspect.signature(cls.__init__).parameters.values()
            names += [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD
                      and p.name not in ("self", "group") and p.name not in names]
    return names


def get_task(name: str, **options) -> Task:
    """The task `name` built with `options`; unknown names and options list the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    unknown = [k for k in options if k not in task_options(name)]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {name!r}; it accepts "
                         f"{task_options(name)}")
    return TASKS[name](**options)


__all__ = ["IGNORE", "Batch", "Task", "TASKS", "get_task", "list_tasks", "task_options"]
