"""`rnnzoo tasks`: every registered task, its family and its options."""

from __future__ import annotations

from rnnzoo.registry import TASKS
from rnnzoo.tasks import list_tasks, task_options


def add_arguments(p) -> None:
    pass


def main(args) -> None:
    names = list_tasks()
    width = max(len(n) for n in names)
    for n in names:
        print(f"{n:<{width}}  {TASKS[n].family:<14}  options: {', '.join(task_options(n))}")
