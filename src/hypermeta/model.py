"""``HyperModel``: encoder + hypernetwork + target, the one object users hold."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hypermeta.episodes import Episode
from hypermeta.spec import Params
from hypermeta.target import FunctionalTarget


class HyperModel(nn.Module):
    """``descriptor or support set --encoder--> z --hypernet--> params --target--> predictions``.

    Arguments:
        encoder: any task encoder (``TaskEmbedding``, ``SetEncoder``, ...) with ``out_dim``.
        hypernet: a generator built on ``target.spec`` (``MLPHyperNet``, ``ChunkedHyperNet``,
            ``DeltaHyperNet``) whose ``z_dim`` equals ``encoder.out_dim``.
        target: the ``FunctionalTarget`` that runs the generated parameters.

    Inputs are validated once here (shapes, dtypes, NaN/Inf, empty supports, unknown ids)
    and moved to the model's device; nothing is changed when validation fails.

    Example:
        >>> target = FunctionalTarget(MLP(1, 1, hidden=(40, 40)))
        >>> model = HyperModel(SetEncoder(1, 1, 64), MLPHyperNet(target.spec, 64), target)
        >>> pred = model(episode)                  # [T, Q, 1]
        >>> nets = model.generate(episode)         # T standalone nn.Modules
    """

    def __init__(self, encoder: nn.Module, hypernet: nn.Module, target: FunctionalTarget) -> None:
        super().__init__()
        if not isinstance(target, FunctionalTarget):
            raise TypeError(f"target must be a FunctionalTarget, got {type(target).__name__}")
        if getattr(hypernet, "spec", None) != target.spec:
            raise ValueError("hypernet.spec differs from target.spec: build the hypernetwork "
                             "from target.spec")
        z_dim, out_dim = getattr(hypernet, "z_dim", None), getattr(encoder, "out_dim", None)
        if z_dim != out_dim:
            raise ValueError(f"encoder.out_dim ({out_dim}) must equal hypernet.z_dim ({z_dim})")
        self.encoder, self.hypernet, self.target = encoder, hypernet, target

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare(self, episode: Episode) -> Episode:
        """Validate ``episode`` for this model (one error listing every problem) and move it to
        the model's device."""
        if not isinstance(episode, Episode):
            raise TypeError(f"episode must be a hypermeta.Episode, got {type(episode).__name__}")
        problems = episode.problems()
        if not problems:
            problems = list(getattr(self.encoder, "problems", lambda e: [])(episode))
            shape = self.target.input_shape
            if shape is not None and tuple(episode.query_x.shape[2:]) != shape:
                problems.append(f"query_x examples have shape {list(episode.query_x.shape[2:])}; "
                                f"the target expects {list(shape)}")
        if problems:
            raise ValueError("invalid Episode for this HyperModel:\n  - " + "\n  - ".join(problems))
        return episode.to(self.device)

    def params(self, episode: Episode) -> Params:
        """The generated parameters of every task in ``episode``: ``{name: [T, *shape]}``."""
        episode = self.prepare(episode)
        result: Params = self.hypernet(self.encoder(episode))
        return result

    def forward(self, episode: Episode) -> Tensor:
        """Predictions of each task's generated network on its query set, ``[T, Q, ...]``."""
        episode = self.prepare(episode)
        z = self.encoder(episode)  # (T, Z)
        params = self.hypernet(z)  # {name: (T, *shape)}
        out: Tensor = self.target(params, episode.query_x)  # (T, Q, ...)
        return out

    @torch.no_grad()
    def generate(self, episode: Episode) -> list[nn.Module]:
        """One standalone ``nn.Module`` per task, holding no reference to the hypernetwork."""
        params = self.params(episode)
        count = next(iter(params.values())).shape[0]
        return [self.target.materialize({n: p[i] for n, p in params.items()})
                for i in range(count)]
