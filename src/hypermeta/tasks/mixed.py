"""Regression tasks of graded difficulty, each task's function hidden from the model.

Functions, easiest first (the difficulty rank): 0 constant, 1 line, 2 low-frequency sinusoid,
3 high-frequency sinusoid, 4 sum of a low- and a high-frequency sinusoid. ``x ~ U[-5, 5]``.
The descriptor is ``[kind, theta...]`` (for grouping results; support-set models never read it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hypermeta.tasks.base import PI, FunctionTasks, uniform

FUNCTIONS = ("constant", "line", "low_sine", "high_sine", "sine_sum")


class MixedTasks(FunctionTasks):
    """Tasks drawn uniformly over the five kinds; descriptor ``[T, 7]`` = kind, 6 parameters."""

    name = "mixed"
    functions = FUNCTIONS  # the function families, easiest first (the descriptor's first entry)

    def __init__(self, *, shots: int = 20, queries: int = 20, eval_queries: int = 100) -> None:
        super().__init__(shots=shots, queries=queries, eval_queries=eval_queries)

    def draw_theta(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        kind = torch.randint(0, len(FUNCTIONS), (num_tasks, 1), generator=generator).float()
        amp1 = uniform(1.0, 3.0, (num_tasks, 1), generator)
        freq1 = uniform(0.3, 0.7, (num_tasks, 1), generator)  # low frequency
        phase1 = uniform(0.0, 2 * PI, (num_tasks, 1), generator)
        amp2 = uniform(0.5, 1.5, (num_tasks, 1), generator)
        freq2 = uniform(1.5, 2.5, (num_tasks, 1), generator)  # high frequency
        phase2 = uniform(0.0, 2 * PI, (num_tasks, 1), generator)
        return torch.cat([kind, amp1, freq1, phase1, amp2, freq2, phase2], dim=1)

    def function(self, theta: Tensor, x: Tensor) -> Tensor:
        kind = theta[:, None, 0:1]
        a1, f1, p1, a2, f2, p2 = (theta[:, None, i:i + 1] for i in range(1, 7))
        low = a1 * torch.sin(f1 * x + p1)
        high = a2 * 2 * torch.sin(f2 * x + p2)
        options = [a1 - 2.0,  # constant in [-1, 1]
                   (a1 - 2.0) * 0.5 * x + (a2 - 1.0),  # line
                   low, high, low + high / 2]
        out = torch.zeros_like(x)
        for k, value in enumerate(options):
            out = torch.where(kind == k, value, out)
        return out
