"""Task losses and metrics, and evaluation as mean ± 95% CI over test tasks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hypermeta.episodes import Episode

TaskKind = Literal["regression", "classification"]


def per_task_loss(pred: Tensor, target: Tensor, kind: TaskKind) -> Tensor:
    """``[T]`` mean loss of each task: MSE (regression) or cross-entropy (classification)."""
    if kind == "classification":
        num_tasks, queries = target.shape[:2]
        ce = F.cross_entropy(pred.reshape(num_tasks * queries, -1), target.reshape(-1).long(),
                             reduction="none")
        return ce.reshape(num_tasks, queries).mean(1)
    return ((pred - target.reshape(pred.shape)) ** 2).reshape(pred.shape[0], -1).mean(1)


def task_loss(pred: Tensor, target: Tensor, kind: TaskKind) -> Tensor:
    """Scalar loss averaged over tasks (the meta-training objective)."""
    return per_task_loss(pred, target, kind).mean()


def per_task_metric(pred: Tensor, target: Tensor, kind: TaskKind) -> Tensor:
    """``[T]``: MSE for regression, accuracy (fraction) for classification."""
    if kind == "classification":
        return (pred.argmax(-1) == target).float().reshape(pred.shape[0], -1).mean(1)
    return per_task_loss(pred, target, kind)


def higher_is_better(kind: TaskKind) -> bool:
    return kind == "classification"


def summarize(values: Tensor) -> dict[str, float]:
    """Mean, std and the 95% confidence half-width (normal approximation) of per-task values."""
    n = values.numel()
    std = values.std().item() if n > 1 else 0.0
    return {"mean": values.mean().item(), "ci95": 1.96 * std / math.sqrt(max(n, 1)),
            "std": std, "tasks": n}


def predictor(learner: Any) -> Callable[[Episode], Tensor]:
    """The evaluation entry of a learner: its ``predict(episode)`` (adapt, then predict)."""
    predict = getattr(learner, "predict", None)
    if not callable(predict):
        raise TypeError(f"{type(learner).__name__} has no predict(episode) method")
    return predict  # type: ignore[no-any-return]


def evaluate(predict: Callable[[Episode], Tensor], episodes: Episode, kind: TaskKind, *,
             batch: int = 100) -> dict[str, float]:
    """Mean ± 95% CI of the per-task metric of ``predict`` over ``episodes`` (in batches).

    Arguments:
        predict: adapts to each task's support set and returns query predictions.
        episodes: the fixed evaluation tasks (``TaskSource.fixed_tasks``).
        kind: ``"regression"`` (MSE) or ``"classification"`` (accuracy, in [0, 1]).
        batch: tasks per call.
    """
    values = []
    for start in range(0, episodes.num_tasks, batch):
        chunk = episodes.slice(start, start + batch)
        assert chunk.query_y is not None
        pred = predict(chunk)
        values.append(per_task_metric(pred.detach().cpu(), chunk.query_y.cpu(), kind))
    return summarize(torch.cat(values))
