"""Noisy linear regression tasks ``y = a x + b + eps``."""

from __future__ import annotations

import torch
from torch import Tensor

from hypermeta.tasks.base import FunctionTasks, uniform


class LinearTasks(FunctionTasks):
    """``a, b ~ U[-2, 2]``, ``x ~ U[-1, 1]``, noise std 0.1 by default; descriptor ``(a, b)``."""

    name = "linear"

    def __init__(self, *, shots: int = 10, queries: int = 20, eval_queries: int = 100,
                 noise: float = 0.1) -> None:
        super().__init__(shots=shots, queries=queries, eval_queries=eval_queries,
                         x_range=(-1.0, 1.0), noise=noise)

    def draw_theta(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        return uniform(-2.0, 2.0, (num_tasks, 2), generator)  # (T, 2): slope, intercept

    def function(self, theta: Tensor, x: Tensor) -> Tensor:
        return theta[:, None, :1] * x + theta[:, None, 1:]
