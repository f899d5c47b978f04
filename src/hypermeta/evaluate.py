"""Evaluation: a learner's per-task metric over fixed test tasks, as mean ± 95% CI."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hypermeta.episodes import Episode
from hypermeta.kinds import TaskKind, get_kind


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


def evaluate(predict: Callable[[Episode], Tensor] | Any, episodes: Episode,
             kind: TaskKind | str, *, batch: int = 100) -> dict[str, float]:
    """Mean ± 95% CI of the kind's per-task metric of ``predict`` over ``episodes``.

    Arguments:
        predict: a learner (its ``predict`` is used) or a function that adapts to each task's
            support set and returns query predictions.
        episodes: the fixed evaluation tasks (``TaskSource.fixed_tasks``).
        kind: the task kind (or its name) whose ``per_task_metric`` is averaged, e.g.
            MSE for regression, accuracy in [0, 1] for classification.
        batch: tasks per call.

    Returns:
        ``{"mean", "ci95", "std", "tasks"}``.

    Example:
        >>> tasks = hypermeta.get_tasks("sinusoid", shots=5)
        >>> evaluate(model, tasks.fixed_tasks("test"), tasks.kind)["mean"]
    """
    return summarize(task_values(predict, episodes, kind, batch=batch))


def task_values(predict: Callable[[Episode], Tensor] | Any, episodes: Episode,
                kind: TaskKind | str, *, batch: int = 100) -> Tensor:
    """The kind's per-task metric of ``predict`` on each of ``episodes`` (``[T]``, CPU)."""
    kind = get_kind(kind)
    device = None
    if isinstance(predict, torch.nn.Module):
        device = next((t.device for t in (*predict.parameters(), *predict.buffers())), None)
        predict = predictor(predict)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    values = []
    for start in range(0, episodes.num_tasks, batch):
        chunk = episodes.slice(start, start + batch)
        if device is not None:  # a learner on a GPU evaluates there
            chunk = chunk.to(device)
        if chunk.query_y is None:
            raise ValueError("evaluation episodes need query_y")
        pred = predict(chunk)
        values.append(kind.per_task_metric(pred.detach().cpu(), chunk.query_y.cpu()))
    return torch.cat(values) if values else torch.zeros(0)
