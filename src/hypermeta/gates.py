"""Structure generation: per-task gates over units / channels, and pruning on materialize.

A gated target has, per gate site (``module.gate_sites()``: MLP hidden units, Conv4 channels), a
generated tensor of gate *logits* (``log alpha``, spec kind ``"gate"``). Gates follow the
hard-concrete / L0 relaxation of Louizos, Welling & Kingma, "Learning Sparse Neural Networks
through L0 Regularization" (ICLR 2018): in training a gate is a stretched, clamped binary-concrete
sample (exact zeros and ones occur, gradients flow to ``log alpha``); in evaluation it is exactly
0 or 1: on iff ``log alpha > 0`` (the sample's median is then >= 1/2). The unit with the largest
logit of a site always stays on, so no layer is ever empty. The expected L0 norm
``P(gate != 0) = sigmoid(log alpha - beta * log(-gamma / zeta))`` is the sparsity cost.

Two parametrisations of a site's logits (``gate_mode``):

* ``"units"`` (spec kind ``"gate"``): one free logit per unit.
* ``"width"`` (spec kind ``"gate_width"``): ONE generated number per site, the open fraction
  ``f`` of its units; unit ``j`` gets the logit ``WIDTH_SLOPE * (f * units - j - 1/2)``, so
  the open units are always a prefix (ordered, as in nested dropout, Rippel et al. 2014) and a
  task's size is a single scalar the hypernetwork can tie to the task.

A site may also be *closable* (a whole residual branch, ``GateSite.closable``): its gates may all
be 0, which removes the branch and leaves the identity path.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from hypermeta.spec import GATE_INITIAL_LOGIT, GATE_KINDS, WIDTH_SLOPE, Params, ParamSpec

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # the paper's temperature and stretch interval
GATE_SUFFIX = "gate"  # spec entries are named "<site module>.gate"
INITIAL_LOGIT = GATE_INITIAL_LOGIT


def gate_values(logits: Tensor, *, training: bool, keep_one: bool = True) -> Tensor:
    """Gate multipliers from logits ``[..., units]``: hard-concrete samples in training, exact
    0/1 in evaluation (with ``keep_one``, the top unit of each site always 1)."""
    if training:
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
    return binary_gates(logits, keep_one=keep_one).to(logits.dtype)


def binary_gates(logits: Tensor, *, keep_one: bool = True) -> Tensor:
    """Evaluation gates: on iff logit > 0, and (``keep_one``) the largest logit of each site
    always on."""
    if not keep_one:
        return logits > 0
    return (logits > 0) | (logits >= logits.amax(dim=-1, keepdim=True))


def unit_logits(value: Tensor, kind: str, units: int) -> Tensor:
    """A site's per-unit logits ``[..., units]`` from its generated tensor: the logits
    themselves (kind ``"gate"``) or an open fraction ``[..., 1]`` (kind ``"gate_width"``)."""
    if kind == "gate":
        return value
    position = torch.arange(units, dtype=value.dtype, device=value.device) + 0.5
    return WIDTH_SLOPE * (value * units - position)


def active_probability(logits: Tensor) -> Tensor:
    """``P(gate != 0)`` per unit: the differentiable expected L0 norm."""
    return torch.sigmoid(logits - BETA * math.log(-GAMMA / ZETA))


def structure_cost(params: Params, spec: ParamSpec) -> Tensor:
    """Mean expected fraction of active units over all gate sites and tasks (0 without gates)."""
    costs = [active_probability(unit_logits(params[n], k, units)).mean()
             for n, k, units in zip(spec.names, spec.kinds, spec.fan_in) if k in GATE_KINDS]
    if not costs:
        return torch.zeros(())
    return torch.stack(costs).mean()


def gate_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """Forward hook: multiply the site's output by its gates along the site's channel dim."""
    dim: int = module.gate_dim  # type: ignore[assignment]
    logits = unit_logits(module.gate, module.gate_kind,  # type: ignore[arg-type]
                         module.gate_units)  # type: ignore[arg-type]  # [units] (one task)
    values = gate_values(logits, training=bool(module.gate_training),
                         keep_one=not module.gate_closable)
    shape = [1] * output.dim()
    shape[dim] = -1
    return output * values.reshape(shape)


def masks_for(params: Params, spec: ParamSpec, *, closable: frozenset[str] = frozenset(),
              where: str = "") -> dict[str, Tensor]:
    """Binary keep-masks per site from ONE task's generated gates; warns when a site that must
    not close would have lost every unit (its top unit is kept). ``closable`` sites (residual
    branches) may close entirely."""
    masks = {}
    for name, kind, units in zip(spec.names, spec.kinds, spec.fan_in):
        if kind not in GATE_KINDS:
            continue
        site = name[: -len(GATE_SUFFIX) - 1]
        logits = unit_logits(params[name], kind, units)
        keep_one = site not in closable
        if keep_one and not bool((logits > 0).any()):
            warnings.warn(f"gates of {site!r}{where} would remove every unit; keeping unit "
                          f"{int(logits.argmax())} so the network is never empty",
                          RuntimeWarning, stacklevel=3)
        masks[site] = binary_gates(logits, keep_one=keep_one)
    return masks


def count_flops(module: nn.Module, example: Tensor) -> int:
    """Floating-point operations of one forward pass, counted by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(example)
    return int(counter.get_total_flops())
