"""Sinusoid regression, the MAML protocol: ``y = A sin(x - phi)``, ``A ~ U[0.1, 5]``,
``phi ~ U[0, pi]``, ``x ~ U[-5, 5]``, K support points (Finn et al. 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from hypermeta.tasks.base import PI, FunctionTasks, uniform


class SinusoidTasks(FunctionTasks):
    """Sinusoid tasks; the descriptor is ``(A, phi)``.

    Example:
        >>> tasks = SinusoidTasks(shots=10)
        >>> test = tasks.fixed_tasks("test")        # 1000 tasks x 100 query points, fixed seed
    """

    name = "sinusoid"
    theta_names = ("amplitude", "phase")

    def __init__(self, *, shots: int = 10, queries: int = 10, eval_queries: int = 100,
                 amplitude: tuple[float, float] = (0.1, 5.0),
                 phase: tuple[float, float] = (0.0, PI)) -> None:
        super().__init__(shots=shots, queries=queries, eval_queries=eval_queries)
        self.amplitude, self.phase = amplitude, phase

    def draw_theta(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        amplitude = uniform(*self.amplitude, (num_tasks, 1), generator)
        phase = uniform(*self.phase, (num_tasks, 1), generator)
        return torch.cat([amplitude, phase], dim=1)  # (T, 2)

    def function(self, theta: Tensor, x: Tensor) -> Tensor:
        return theta[:, None, :1] * torch.sin(x - theta[:, None, 1:])
