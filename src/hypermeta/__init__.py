"""hypermeta: meta-learning with hypernetworks that generate the weights of any PyTorch model.

The public API is exactly what this module lists in ``__all__``.
"""

from hypermeta.encoders import (
    FeatureEncoder,
    HashedLabelEncoder,
    SetEncoder,
    TaskEmbedding,
    TextEncoder,
    stable_hash,
)
from hypermeta.episodes import Episode
from hypermeta.hypernets import (
    ChunkedHyperNet,
    ClassHead,
    DeltaHyperNet,
    MLPHyperNet,
    count_parameters,
)
from hypermeta.model import HyperModel
from hypermeta.networks import (
    MLP,
    NETWORKS,
    Conv4,
    GRUNet,
    LSTMNet,
    ResMLP,
    TransformerNet,
    build_network,
)
from hypermeta.spec import Params, ParamSpec
from hypermeta.target import FunctionalTarget

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "NETWORKS",
    "ChunkedHyperNet",
    "ClassHead",
    "Conv4",
    "DeltaHyperNet",
    "Episode",
    "FeatureEncoder",
    "FunctionalTarget",
    "GRUNet",
    "HashedLabelEncoder",
    "HyperModel",
    "LSTMNet",
    "MLPHyperNet",
    "ParamSpec",
    "ResMLP",
    "Params",
    "SetEncoder",
    "TaskEmbedding",
    "TextEncoder",
    "TransformerNet",
    "__version__",
    "build_network",
    "count_parameters",
    "stable_hash",
]
