"""Structure generation: per-task gates over units / channels, and pruning on materialize.

A gated target has, per gate site (``module.gate_sites()``: MLP hidden units, Conv4 channels), a
generated tensor of gate *logits* (``log alpha``, spec kind ``"gate"``). Gates follow the
hard-concrete / L0 relaxation of Louizos, Welling & Kingma, "Learning Sparse Neural Networks
through L0 Regularization" (ICLR 2018): in training a gate is a stretched, clamped binary-concrete
sample (exact zeros and ones occur, gradients flow to ``log alpha``); in evaluation it is exactly
0 or 1: on iff ``log alpha > 0`` (the sample's median is then >= 1/2). The unit with the largest
logit of a site always stays on, so no layer is ever empty. The expected L0 norm
``P(gate != 0) = sigmoid(log alpha - beta * log(-gamma / zeta))`` is the sparsity cost.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from hypermeta.spec import GATE_INITIAL_LOGIT, Params, ParamSpec

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # the paper's temperature and stretch interval
GATE_SUFFIX = "gate"  # spec entries are named "<site module>.gate"
INITIAL_LOGIT = GATE_INITIAL_LOGIT


def gate_values(logits: Tensor, *, training: bool) -> Tensor:
    """Gate multipliers from logits ``[..., units]``: hard-concrete samples in training, exact
    0/1 in evaluation (the top unit of each site always 1)."""
    if training:
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
    return binary_gates(logits).to(logits.dtype)


def binary_gates(logits: Tensor) -> Tensor:
    """Evaluation gates: on iff logit > 0, and the largest logit of each site always on."""
    return (logits > 0) | (logits >= logits.amax(dim=-1, keepdim=True))


def active_probability(logits: Tensor) -> Tensor:
    """``P(gate != 0)`` per unit: the differentiable expected L0 norm."""
    return torch.sigmoid(logits - BETA * math.log(-GAMMA / ZETA))


def structure_cost(params: Params, spec: ParamSpec) -> Tensor:
    """Mean expected fraction of active units over all gate sites and tasks (0 without gates)."""
    costs = [active_probability(params[n]).mean() for n, k in zip(spec.names, spec.kinds)
             if k == "gate"]
    if not costs:
        return torch.zeros(())
    return torch.stack(costs).mean()


def gate_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """Forward hook: multiply the site's output by its gates along the site's channel dim."""
    logits: Tensor = module.gate  # type: ignore[assignment]  # [units] (one task)
    dim: int = module.gate_dim  # type: ignore[assignment]
    values = gate_values(logits, training=bool(module.gate_training))
    shape = [1] * output.dim()
    shape[dim] = -1
    return output * values.reshape(shape)


def masks_for(params: Params, spec: ParamSpec, *, where: str = "") -> dict[str, Tensor]:
    """Binary keep-masks per site from ONE task's gate logits; warns when a site would have
    lost every unit (its top unit is kept)."""
    masks = {}
    for name, kind in zip(spec.names, spec.kinds):
        if kind != "gate":
            continue
        site = name[: -len(GATE_SUFFIX) - 1]
        logits = params[name]
        if not bool((logits > 0).any()):
            warnings.warn(f"gates of {site!r}{where} would remove every unit; keeping unit "
                          f"{int(logits.argmax())} so the network is never empty",
                          RuntimeWarning, stacklevel=3)
        masks[site] = binary_gates(logits)
    return masks


def count_flops(module: nn.Module, example: Tensor) -> int:
    """Floating-point operations of one forward pass, counted by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(example)
    return int(counter.get_total_flops())
