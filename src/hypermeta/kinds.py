"""Task kinds: what a task's predictions mean — its loss, its metric and the metric's direction,
the form of its labels, and how predictions become JSON.

A task family owns its kind (``TaskSource.kind``); training, evaluation, fine-tuning, the CLI
and the server ask the kind instead of comparing strings. A new kind is one ``TaskKind``
subclass and one ``TASK_KINDS.register`` line::

    @TASK_KINDS.register("ranking")
    class Ranking(TaskKind): ...
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from hypermeta.registry import TASK_KINDS


class TaskKind(abc.ABC):
    """What predictions of one kind of task mean. Subclasses set the class attributes and
    implement ``per_task_loss`` / ``per_task_metric``.

    Attributes:
        name: the registered name (``"regression"``, ``"classification"``, ...).
        metric: the metric's name in reports (``"mse"``, ``"accuracy"``).
        higher_is_better: the metric's direction (validation, early stopping, best checkpoint).
        label_dtype: dtype of ``support_y``/``query_y`` (float for values, long for classes).
        uses_classes: labels are class indices ``[T, S]`` (the set encoder one-hot encodes them,
            a per-class head and ProtoNets need them).
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    label_dtype: ClassVar[torch.dtype] = torch.float32
    uses_classes: ClassVar[bool] = False

    @abc.abstractmethod
    def per_task_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """``pred [T, N, ...]``, ``target [T, N, ...]`` -> the differentiable loss of each
        task, ``[T]``."""

    @abc.abstractmethod
    def per_task_metric(self, pred: Tensor, target: Tensor) -> Tensor:
        """``[T]``: the reported metric of each task."""

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """The meta-training objective: the per-task loss averaged over tasks."""
        return self.per_task_loss(pred, target).mean()

    def better(self, new: float, old: float | None, min_delta: float = 0.0) -> bool:
        """Whether metric ``new`` improves on ``old`` by more than ``min_delta``."""
        if old is None:
            return True
        return new > old + min_delta if self.higher_is_better else new < old - min_delta

    def labels(self, y: Tensor, out_dim: int) -> Tensor:
        """One task's labels from outside (CLI file, HTTP request) in this kind's form:
        ``[S]`` or ``[S, out_dim]`` -> the ``support_y`` of one task."""
        y = y.to(self.label_dtype)
        return y[:, None] if y.dim() == 1 and not self.uses_classes else y

    def empty_labels(self, num_tasks: int, out_dim: int) -> Tensor:
        """``support_y`` of an empty support set (tasks given by a descriptor alone)."""
        shape = (num_tasks, 0) if self.uses_classes else (num_tasks, 0, out_dim)
        return torch.zeros(shape, dtype=self.label_dtype)

    def label_problems(self, y: Tensor, out_dim: int) -> list[str]:
        """What is wrong with one task's labels from outside (empty when valid)."""
        if y.is_floating_point() and not bool(torch.isfinite(y).all()):
            return ["labels contain NaN or Inf"]
        return []

    def to_json(self, pred: Tensor) -> dict[str, Any]:
        """One task's predictions ``[N, ...]`` as a JSON-able dict (``{"predictions": ...}``)."""
        return {"predictions": pred.tolist()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Regression(TaskKind):
    """Real-valued targets; loss and metric the mean squared error (lower is better)."""

    name = "regression"
    metric = "mse"
    higher_is_better = False

    def per_task_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return ((pred - target.reshape(pred.shape)) ** 2).reshape(pred.shape[0], -1).mean(1)

    def per_task_metric(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.per_task_loss(pred, target)


class Classification(TaskKind):
    """Class labels ``[T, N]`` and logits ``[T, N, C]``; loss cross-entropy, metric accuracy
    (a fraction in [0, 1], higher is better)."""

    name = "classification"
    metric = "accuracy"
    higher_is_better = True
    label_dtype = torch.long
    uses_classes = True

    def per_task_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        num_tasks, queries = target.shape[:2]
        ce = F.cross_entropy(pred.reshape(num_tasks * queries, -1), target.reshape(-1).long(),
                             reduction="none")
        return ce.reshape(num_tasks, queries).mean(1)

    def per_task_metric(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred.argmax(-1) == target).float().reshape(pred.shape[0], -1).mean(1)

    def labels(self, y: Tensor, out_dim: int) -> Tensor:
        return y.long()

    def label_problems(self, y: Tensor, out_dim: int) -> list[str]:
        if y.dim() != 1:
            return [f"class labels must be one integer per example, shape [S]; got "
                    f"{list(y.shape)}"]
        if y.is_floating_point() and not bool((y == y.round()).all()):
            return ["class labels must be integers"]
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= out_dim):
            return [f"class labels must lie in 0..{out_dim - 1}"]
        return []

    def to_json(self, pred: Tensor) -> dict[str, Any]:
        return {"predictions": pred.argmax(-1).tolist(),
                "probabilities": torch.softmax(pred, -1).tolist()}


TASK_KINDS.register("regression", Regression())
TASK_KINDS.register("classification", Classification())


def get_kind(kind: str | TaskKind) -> TaskKind:
    """A ``TaskKind`` from itself or its registered name."""
    if isinstance(kind, TaskKind):
        return kind
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a TaskKind or a registered name "
                        f"{TASK_KINDS.names()}; got {type(kind).__name__}")
    found = TASK_KINDS.get(kind)
    if not isinstance(found, TaskKind):
        raise TypeError(f"task kind {kind!r} is registered as a {type(found).__name__}, not a "
                        "TaskKind instance")
    return found
