"""Task families and the registry ``name -> TaskSource`` (with its train/val/test splits)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypermeta.tasks.arrays import LabeledArrayTasks
from hypermeta.tasks.base import SPLITS, FunctionTasks, Split, TaskSource, split_seed
from hypermeta.tasks.linear import LinearTasks
from hypermeta.tasks.mixed import MixedTasks
from hypermeta.tasks.omniglot import omniglot_tasks
from hypermeta.tasks.sinusoid import SinusoidTasks

# name -> constructor of a TaskSource (a class, or a loader such as omniglot_tasks(data_dir=...,
# ways=..., shots=..., queries=...), which finds its data through HYPERMETA_DATA by default)
TASKS: dict[str, Callable[..., TaskSource]] = {"sinusoid": SinusoidTasks, "linear": LinearTasks,
                                               "mixed": MixedTasks, "omniglot": omniglot_tasks}


def get_tasks(name: str, **kwargs: Any) -> TaskSource:
    """Build a registered task family, e.g. ``get_tasks("sinusoid", shots=5)``."""
    if name not in TASKS:
        raise ValueError(f"unknown task family {name!r}; registered: {sorted(TASKS)}")
    try:
        return TASKS[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for task family {name!r}: {err}") from None


__all__ = ["SPLITS", "TASKS", "FunctionTasks", "LabeledArrayTasks", "LinearTasks", "MixedTasks",
           "SinusoidTasks", "Split", "TaskSource", "get_tasks", "split_seed"]
