"""Gradient steps on each task's support set, for all T tasks at once.

Used by fine-tuning of generated networks and by MAML's inner loop. Tasks are independent, so
the gradient of the *sum* of per-task support losses w.r.t. the batched params ``[T, ...]`` is
exactly each task's own gradient: one backward serves every task.
"""

from __future__ import annotations

import torch

from hypermeta.episodes import Episode
from hypermeta.kinds import TaskKind
from hypermeta.spec import Params
from hypermeta.target import FunctionalTarget


def adapt(target: FunctionalTarget, params: Params, episode: Episode, kind: TaskKind, *,
          steps: int, lr: float, create_graph: bool = False,
          keep_finite: bool = False) -> Params:
    """``steps`` SGD steps of every task's params on its support set; returns the new params.

    Arguments:
        target: runs the params.
        params: ``{name: [T, *shape]}``; gradients flow back through them when
            ``create_graph`` is True (second-order MAML), else the result is detached from
            the inputs' graph except through the identity path (first-order / fine-tuning).
        episode: supplies ``support_x``/``support_y``.
        kind: the task kind whose ``per_task_loss`` is minimised.
        steps, lr: number and size of the steps; deterministic (no sampling).

        keep_finite: a task whose step would leave a non-finite value (SGD diverging on
            extreme support values) keeps its last finite parameters; the others are
            unaffected. A few extra ops per step (no device sync): on for the fine-tuning of
            generated networks, off for MAML's inner loop (as published).
    """
    if steps == 0:
        return params
    with torch.enable_grad():
        # leaves that carry no graph (fine-tuning) become leaves we can differentiate
        current = {n: p if p.requires_grad else p.detach().requires_grad_(True)
                   for n, p in params.items()}
        for _ in range(steps):
            loss = kind.per_task_loss(target(current, episode.support_x),
                                      episode.support_y).sum()
            grads = torch.autograd.grad(loss, list(current.values()), create_graph=create_graph)
            stepped = {n: p - lr * g for (n, p), g in zip(current.items(), grads)}
            current = _keep_finite(stepped, current) if keep_finite else stepped
    return current


def _keep_finite(stepped: Params, current: Params) -> Params:
    """A task whose step left NaN/Inf anywhere (SGD diverging on extreme support values)
    keeps its last finite parameters; other tasks take the step. No device sync."""
    ok = torch.stack([torch.isfinite(p.reshape(p.shape[0], -1)).all(1)
                      for p in stepped.values()]).all(0)  # (T,)
    return {n: torch.where(ok.reshape(-1, *[1] * (p.dim() - 1)), p, current[n])
            for n, p in stepped.items()}
