"""hypermeta: meta-learning with hypernetworks that generate the weights of any PyTorch model.

The public API is exactly what this module lists in ``__all__``: the core types (imported
here), and the run API (``fit``, ``RunConfig``, ``load``, ``evaluate``, ``get_tasks``, ...),
imported on first use so that ``import hypermeta`` stays light and a process that only serves
never imports the trainer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hypermeta.encoders import (
    FeatureEncoder,
    HashedLabelEncoder,
    SetEncoder,
    TaskEmbedding,
    TextEncoder,
    stable_hash,
)
from hypermeta.episodes import Episode, episode_ways

# eager: the function shares its module's name, which a lazy import would leave shadowed
from hypermeta.evaluate import evaluate, summarize
from hypermeta.gates import count_flops
from hypermeta.heads import ClassHead, RidgeHead
from hypermeta.hypernets import (
    ChunkedHyperNet,
    DeltaHyperNet,
    MLPHyperNet,
    SplitHyperNet,
    count_parameters,
    split_spec,
)
from hypermeta.kinds import Classification, Regression, TaskKind, get_kind
from hypermeta.model import HyperModel, Learner, ModelOutput
from hypermeta.networks import (
    MLP,
    Conv4,
    GRUNet,
    LSTMNet,
    ResMLP,
    TransformerNet,
    build_network,
)
from hypermeta.parts import Part
from hypermeta.registry import (
    DATA_SOURCES,
    ENCODERS,
    HYPERNETS,
    INPUT_DECODERS,
    METHODS,
    TARGETS,
    TASK_FAMILIES,
    TASK_KINDS,
    BuildContext,
    Registry,
    UnknownNameError,
)
from hypermeta.spec import Init, Params, ParamSpec
from hypermeta.target import FunctionalTarget

if TYPE_CHECKING:
    from hypermeta.config import ConfigError, RunConfig
    from hypermeta.files import atomic_write_json
    from hypermeta.progress import ProgressBar
    from hypermeta.runs import Run, load, load_run
    from hypermeta.tasks import LabeledArrayTasks, TaskSource, get_tasks
    from hypermeta.train import Callback, FitResult, fit

__version__ = "0.2.0"

# The methods, imported only when a config names one (so the server never imports a baseline).
# Registered here, where the package is wired together, so that no core module names a run
# module, and every process that imports any part of hypermeta has them.
METHODS.register_lazy("hypernet", "hypermeta.runs:build_hypermodel")
for _name in ("maml", "fomaml", "protonet", "scratch"):
    METHODS.register_lazy(_name, f"hypermeta.baselines:build_{_name}")

# the run layer, imported on first use: name -> module
_LAZY = {
    "Callback": "hypermeta.train", "FitResult": "hypermeta.train", "fit": "hypermeta.train",
    "atomic_write_json": "hypermeta.files",
    "ConfigError": "hypermeta.config", "RunConfig": "hypermeta.config",
    "ProgressBar": "hypermeta.progress",
    "Run": "hypermeta.runs", "load": "hypermeta.runs", "load_run": "hypermeta.runs",
    "LabeledArrayTasks": "hypermeta.tasks", "TaskSource": "hypermeta.tasks",
    "get_tasks": "hypermeta.tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hypermeta' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DATA_SOURCES",
    "ENCODERS",
    "HYPERNETS",
    "INPUT_DECODERS",
    "METHODS",
    "MLP",
    "TARGETS",
    "TASK_FAMILIES",
    "TASK_KINDS",
    "BuildContext",
    "Callback",
    "ChunkedHyperNet",
    "ClassHead",
    "RidgeHead",
    "Classification",
    "ConfigError",
    "Conv4",
    "DeltaHyperNet",
    "Episode",
    "FeatureEncoder",
    "FitResult",
    "FunctionalTarget",
    "GRUNet",
    "HashedLabelEncoder",
    "HyperModel",
    "Init",
    "LSTMNet",
    "LabeledArrayTasks",
    "Learner",
    "MLPHyperNet",
    "SplitHyperNet",
    "split_spec",
    "ModelOutput",
    "ParamSpec",
    "Params",
    "Part",
    "ProgressBar",
    "Registry",
    "Regression",
    "ResMLP",
    "Run",
    "RunConfig",
    "SetEncoder",
    "TaskEmbedding",
    "TaskKind",
    "TaskSource",
    "TextEncoder",
    "TransformerNet",
    "UnknownNameError",
    "__version__",
    "atomic_write_json",
    "build_network",
    "count_flops",
    "count_parameters",
    "episode_ways",
    "evaluate",
    "fit",
    "get_kind",
    "get_tasks",
    "load",
    "load_run",
    "stable_hash",
    "summarize",
]
