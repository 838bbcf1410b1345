"""Task registry: every dataset the recipes and `unmask eval` know by name."""
from __future__ import annotations

from typing import Any

from unmask.data.arith import ArithTask
from unmask.data.shakespeare import ShakespeareTask
from unmask.data.sort import SortTask

TASKS = {"sort": SortTask, "arith": ArithTask, "shakespeare": ShakespeareTask}


def get_task(name: str, **options: Any) -> SortTask | ArithTask | ShakespeareTask:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**options)
