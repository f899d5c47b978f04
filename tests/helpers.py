"""Small shared builders for the tests."""

from __future__ import annotations

import torch

from hypermeta import FunctionalTarget, Params


def random_params(target: FunctionalTarget, num_tasks: int, *, scale: float = 0.3,
                  dtype: torch.dtype = torch.float64) -> Params:
    """Random per-task params for ``target`` (a stand-in for a hypernetwork's output)."""
    out = {}
    for name, shape, kind in zip(target.spec.names, target.spec.shapes, target.spec.kinds):
        value = torch.randn(num_tasks, *shape, dtype=dtype) * scale
        out[name] = value + 1 if kind == "norm_weight" else value
    return out


def task(params: Params, index: int) -> Params:
    return {name: value[index] for name, value in params.items()}
