"""Plain ``torch.nn.functional`` plans for the stacks the library builds most.

``functional_call`` under ``vmap`` runs any module with generated parameters, at the price of
re-parametrising the module and tracing it per call: for a small target, most of a step's
time. A ``LinearPlan`` runs a ``nn.Sequential`` of ``nn.Linear`` layers and element-wise
activations (the built-in ``MLP`` among them) directly: one batched matrix product per layer
for T tasks (``torch.baddbmm``), or ``F.linear`` for one task, with the same operations and
results (tested against the generic path, gradients included). ``FunctionalTarget`` uses a plan
whenever its module is such a stack and nothing but plain tensors is generated; everything
else takes the generic path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Callable[[Tensor], Tensor]


def _activation(module: nn.Module) -> Activation | None:
    """The functional form of an element-wise activation module (``None``: not one)."""
    kind = type(module)
    if kind is nn.ReLU:
        return F.relu
    if kind is nn.Tanh:
        return torch.tanh
    if kind is nn.Sigmoid:
        return torch.sigmoid
    if kind is nn.SiLU:
        return F.silu
    if kind is nn.GELU:
        return functools.partial(F.gelu, approximate=module.approximate)  # type: ignore[arg-type]
    if kind is nn.LeakyReLU:
        return functools.partial(F.leaky_relu, negative_slope=module.negative_slope)  # type: ignore[arg-type]
    if kind is nn.Identity:
        return lambda x: x
    return None


def _hooked(module: nn.Module) -> bool:
    return any(getattr(m, attr) for m in module.modules()
               for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))


@dataclass(frozen=True)
class _Layer:
    weight: str
    bias: str | None


@dataclass(frozen=True)
class LinearPlan:
    """How to run a stack of ``nn.Linear`` layers and activations from tensors by name.

    ``steps`` holds, in order, a ``_Layer`` (the parameter names of one ``nn.Linear``) or an
    activation function. Built by ``LinearPlan.of``; run by ``__call__``.
    """

    steps: tuple[_Layer | Activation, ...]
    in_features: int

    @staticmethod
    def of(module: nn.Module, generated: frozenset[str]) -> LinearPlan | None:
        """The plan of ``module``, or ``None`` when it is not a plain stack: a
        ``nn.Sequential`` (or a subclass that keeps its ``forward``, like ``MLP``) of
        ``nn.Linear`` and activation modules, without hooks. ``generated``: the parameter
        names the hypernetwork supplies (all must be Linear weights or biases)."""
        if not isinstance(module, nn.Sequential) or \
                type(module).forward is not nn.Sequential.forward or _hooked(module):
            return None
        steps: list[_Layer | Activation] = []
        in_features = None
        names: set[str] = set()
        for name, child in module.named_children():
            if type(child) is nn.Linear:
                in_features = child.in_features if in_features is None else in_features
                bias = f"{name}.bias" if child.bias is not None else None
                steps.append(_Layer(f"{name}.weight", bias))
                names.update(n for n in (f"{name}.weight", bias) if n is not None)
                continue
            act = _activation(child)
            if act is None:
                return None
            steps.append(act)
        if in_features is None or not generated <= names:
            return None
        return LinearPlan(tuple(steps), in_features)

    def __call__(self, shared: Mapping[str, Tensor], params: Mapping[str, Tensor],
                 x: Tensor) -> Tensor:
        """T task networks on ``x`` ``[T, N, in]``: ``params`` ``{name: [T, *shape]}`` for the
        generated tensors, ``shared`` (one tensor each) for the rest."""
        one = x.shape[0] == 1
        h = x[0] if one else x
        for step in self.steps:
            if not isinstance(step, _Layer):
                h = step(h)
                continue
            weight, bias = params.get(step.weight), None
            if step.bias is not None:
                bias = params.get(step.bias)
            if one or weight is None:  # one task, or a shared weight: plain F.linear
                w = shared[step.weight] if weight is None else weight[0]
                b = None if step.bias is None else (
                    shared[step.bias] if bias is None else (bias[0] if one else None))
                h = F.linear(h, w, b)
                if not one and bias is not None:  # shared weight, generated bias
                    h = h + bias[:, None, :]
            elif bias is not None:  # the usual case: both generated, one batched product
                h = torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2))
            else:
                h = torch.bmm(h, weight.transpose(1, 2))
                if step.bias is not None:
                    h = h + shared[step.bias]
        return h[None] if one else h
