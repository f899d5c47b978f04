"""Baselines on the same ``Episode`` / ``FunctionalTarget``: MAML, first-order MAML, ProtoNets,
training the target from scratch on each support set, and DTW template matching for sequences.

Every learner (``HyperModel`` included) is an ``nn.Module`` with ``forward(episode)`` (the
meta-training path: query predictions ``[T, Q, ...]``) and ``predict(episode)`` (evaluation:
adapt to each support set, then predict the queries).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hypermeta.adapt import adapt
from hypermeta.config import ConfigError
from hypermeta.episodes import Episode, episode_ways
from hypermeta.heads import class_means
from hypermeta.kinds import TaskKind, get_kind
from hypermeta.model import Learner
from hypermeta.spec import Params
from hypermeta.target import FunctionalTarget


class MAML(Learner):
    """Model-agnostic meta-learning (Finn et al. 2017) over a target whose params are all
    task-specific (``FunctionalTarget(net, generate="all")``).

    Arguments:
        target: the network; its initial values become the meta-learned initialisation.
        kind: the task kind (its loss drives the inner steps).
        inner_lr: inner SGD step size (alpha).
        inner_steps: inner steps during meta-training.
        test_inner_steps: inner steps at evaluation (``predict``).
        first_order: drop second-order terms (FOMAML).
    """

    def __init__(self, target: FunctionalTarget, kind: TaskKind | str, *,
                 inner_lr: float = 0.01, inner_steps: int = 1, test_inner_steps: int = 10,
                 first_order: bool = False) -> None:
        super().__init__()
        self.target, self.kind = target, get_kind(kind)
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.test_inner_steps, self.first_order = test_inner_steps, first_order
        spec = target.spec
        self.init = nn.Parameter(spec.flatten(target.initial_params()).detach().clone())

    def initial(self, num_tasks: int) -> Params:
        """The meta-learned initialisation, broadcast to ``num_tasks`` (no copy)."""
        return self.target.spec.unflatten(self.init.expand(num_tasks, -1))

    def adapted(self, episode: Episode, steps: int, *, training: bool) -> Params:
        return adapt(self.target, self.initial(episode.num_tasks), episode, self.kind,
                     steps=steps, lr=self.inner_lr,
                     create_graph=training and not self.first_order)

    def forward(self, episode: Episode) -> Tensor:
        params = self.adapted(episode, self.inner_steps, training=True)
        out: Tensor = self.target(params, episode.query_x)
        return out

    def predict(self, episode: Episode) -> Tensor:
        params = self.adapted(episode, self.test_inner_steps, training=False)
        with torch.no_grad():
            out: Tensor = self.target(params, episode.query_x)
        return out


class ProtoNet(Learner):
    """Prototypical networks (Snell et al. 2017): class means of embedded support examples;
    logits are negative squared Euclidean distances to each prototype.

    Arguments:
        embedding: any module ``[N, ...] -> [N, D]`` (e.g. the conv-4 feature extractor).

    Each episode's way count is read from its support labels, so a model trained 20-way
    evaluates 5-way episodes too.
    """

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        self.embedding = embedding
        self.kind = get_kind("classification")

    def forward(self, episode: Episode) -> Tensor:
        x_s, x_q = episode.support_x, episode.query_x
        num_tasks, shots, queries = x_s.shape[0], x_s.shape[1], x_q.shape[1]
        both = torch.cat([x_s.flatten(0, 1), x_q.flatten(0, 1)])
        emb = self.embedding(both).flatten(1)
        support = emb[: num_tasks * shots].reshape(num_tasks, shots, -1)  # (T, S, D)
        query = emb[num_tasks * shots:].reshape(num_tasks, queries, -1)  # (T, Q, D)
        prototypes = class_means(support, episode.support_y, episode_ways(episode),
                                 episode.support_mask)  # (T, N, D)
        return -torch.cdist(query, prototypes) ** 2  # (T, Q, N) logits

    def predict(self, episode: Episode) -> Tensor:
        with torch.no_grad():
            out: Tensor = self(episode)
        return out


class Scratch(Learner):
    """No meta-learning: each task trains the target from one fixed initialisation on its
    support set with Adam (``steps`` steps, ``lr``), all tasks batched. Nothing is meta-trained.
    """

    def __init__(self, target: FunctionalTarget, kind: TaskKind | str, *, steps: int = 100,
                 lr: float = 0.01) -> None:
        super().__init__()
        self.target, self.kind, self.steps, self.lr = target, get_kind(kind), steps, lr
        self.register_buffer("start", target.spec.flatten(target.initial_params()).detach())

    def forward(self, episode: Episode) -> Tensor:
        return self.predict(episode)

    def predict(self, episode: Episode) -> Tensor:
        start = self.get_buffer("start")  # (P,) the same fixed start for every task
        flat = start.expand(episode.num_tasks, -1).clone().requires_grad_(True)  # (T, P)
        optimizer = torch.optim.Adam([flat], lr=self.lr)  # element-wise: tasks independent
        with torch.enable_grad():
            for _ in range(self.steps):
                params = self.target.spec.unflatten(flat)
                loss = self.kind.per_task_loss(self.target(params, episode.support_x),
                                               episode.support_y).sum()
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
        with torch.no_grad():
            out: Tensor = self.target(self.target.spec.unflatten(flat), episode.query_x)
        return out


# --------------------------------------------------------------- builders (config -> learner)
# Registered lazily in hypermeta.registry.METHODS, so only processes that build a baseline
# import this module.
def dtw_distances(a: Tensor, b: Tensor) -> Tensor:
    """Dynamic time warping distances between every sequence of ``a [A, L, D]`` and of
    ``b [B, M, D]`` -> ``[A, B]``: the least total Euclidean frame distance over monotone
    alignments of the whole sequences (steps (1, 0), (0, 1), (1, 1)), divided by ``L + M``."""
    cost = torch.cdist(a[:, None].expand(-1, b.shape[0], -1, -1),
                       b[None].expand(a.shape[0], -1, -1, -1))  # (A, B, L, M)
    steps, width = cost.shape[2], cost.shape[3]
    inf = torch.full(cost.shape[:2], float("inf"), dtype=cost.dtype, device=cost.device)
    previous = [inf] * (width + 1)  # row i-1, columns -1..M-1
    previous[0] = torch.zeros_like(inf)
    for i in range(steps):
        row = [inf]
        for j in range(width):
            best = torch.minimum(torch.minimum(previous[j + 1], row[j]), previous[j])
            row.append(cost[:, :, i, j] + best)
        previous = [inf] + row[1:]
    return previous[width] / (steps + width)


class DTWNearest(Learner):
    """Template matching (the classic few-shot keyword-spotting baseline): each query takes the
    class of its nearest support example under dynamic time warping of the feature sequences
    ``[L, D]`` (``dtw_distances``). Nothing is trained; logits are minus the distance to each
    class's nearest example."""

    def __init__(self) -> None:
        super().__init__()
        self.kind = get_kind("classification")

    def forward(self, episode: Episode) -> Tensor:
        ways = episode_ways(episode)
        logits = []
        for t in range(episode.support_x.shape[0]):
            distance = dtw_distances(episode.query_x[t].float(), episode.support_x[t].float())
            per_class = torch.full((distance.shape[0], ways), float("inf"))
            for c in range(ways):
                members = episode.support_y[t] == c
                if bool(members.any()):
                    per_class[:, c] = distance[:, members].min(dim=1).values
            logits.append(-per_class)
        return torch.stack(logits)

    def predict(self, episode: Episode) -> Tensor:
        with torch.no_grad():
            out: Tensor = self(episode)
        return out


def _needs_classes(method: str, tasks: Any) -> None:
    if not tasks.kind.uses_classes:
        raise ConfigError(f"method: {method} needs class labels; {tasks.name!r} is "
                          f"{tasks.kind.name}")


def build_protonet(config: Any, tasks: Any, net: nn.Module) -> ProtoNet:
    """ProtoNets over the target's feature extractor (``net.features`` when it has one)."""
    _needs_classes("protonet", tasks)
    body = getattr(net, "features", net)  # conv4: the feature extractor, no head
    return ProtoNet(nn.Sequential(body, nn.Flatten()))


def build_maml(config: Any, tasks: Any, net: nn.Module, *, first_order: bool = False) -> MAML:
    """MAML over every parameter of the target (``config.maml`` holds its step sizes)."""
    functional = FunctionalTarget(net, batchnorm=config.batchnorm)
    return MAML(functional, tasks.kind, inner_lr=config.maml.inner_lr,
                inner_steps=config.maml.inner_steps,
                test_inner_steps=config.maml.test_inner_steps, first_order=first_order)


def build_fomaml(config: Any, tasks: Any, net: nn.Module) -> MAML:
    """First-order MAML."""
    return build_maml(config, tasks, net, first_order=True)


def build_scratch(config: Any, tasks: Any, net: nn.Module) -> Scratch:
    """Training each task's network from scratch on its support set (``config.scratch``)."""
    return Scratch(FunctionalTarget(net, batchnorm=config.batchnorm), tasks.kind,
                   steps=config.scratch.steps, lr=config.scratch.lr)
