"""Task families, registered by name in ``hypermeta.TASK_FAMILIES`` (with train/val/test
splits). A new family is one module here (or anywhere) and one ``TASK_FAMILIES.register``."""

from __future__ import annotations

from typing import Any

from hypermeta.registry import DATA_SOURCES, TASK_FAMILIES
from hypermeta.tasks import inputs  # noqa: F401  (registers the input decoders)
from hypermeta.tasks.arrays import LabeledArrayTasks
from hypermeta.tasks.base import SPLITS, FunctionTasks, Split, TaskSource, split_seed
from hypermeta.tasks.folder import folder_tasks
from hypermeta.tasks.linear import LinearTasks
from hypermeta.tasks.mixed import MixedTasks
from hypermeta.tasks.movielens import movielens_tasks
from hypermeta.tasks.omniglot import omniglot_tasks
from hypermeta.tasks.sinusoid import SinusoidTasks
from hypermeta.tasks.speech import fsdd_tasks, spoken_words_tasks
from hypermeta.tasks.table import table_tasks
from hypermeta.tasks.wordnet import wordnet_tasks

TASK_FAMILIES.register("sinusoid", SinusoidTasks)
TASK_FAMILIES.register("linear", LinearTasks)
TASK_FAMILIES.register("mixed", MixedTasks)
TASK_FAMILIES.register("omniglot", omniglot_tasks)
DATA_SOURCES.register_lazy("omniglot", "hypermeta.tasks.omniglot:prepare_omniglot")
TASK_FAMILIES.register("folder", folder_tasks)
TASK_FAMILIES.register("table", table_tasks)
TASK_FAMILIES.register("wordnet", wordnet_tasks)
DATA_SOURCES.register_lazy("wordnet", "hypermeta.tasks.wordnet:prepare_wordnet")
TASK_FAMILIES.register("spoken_words", spoken_words_tasks)
TASK_FAMILIES.register("fsdd", fsdd_tasks)
TASK_FAMILIES.register("movielens", movielens_tasks)
DATA_SOURCES.register_lazy("spoken-words", "hypermeta.tasks.speech:prepare_spoken_words")


def get_tasks(name: str, **kwargs: Any) -> TaskSource:
    """Build a registered task family, e.g. ``get_tasks("sinusoid", shots=5)``.

    Raises ``UnknownNameError`` (a ``ValueError``) listing the registered names for an unknown
    family, and ``TypeError`` for arguments the family does not take.
    """
    builder = TASK_FAMILIES.get(name)
    try:
        source = builder(**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for task family {name!r}: {err}") from None
    if not isinstance(source, TaskSource):
        raise TypeError(f"task family {name!r} built a {type(source).__name__}, not a "
                        "TaskSource")
    return source


__all__ = ["SPLITS", "TASK_FAMILIES", "FunctionTasks", "LabeledArrayTasks", "LinearTasks",
           "MixedTasks", "SinusoidTasks", "Split", "TaskSource", "get_tasks", "split_seed"]
