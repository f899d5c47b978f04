"""Structure generation: per-task gates over units / channels, and pruning on materialize.

A gated target has, per gate site (``module.gate_sites()``: MLP hidden units, Conv4 channels,
Transformer heads, feed-forward units and layers), a
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

``Gates`` is the part (``hypermeta.parts``) a target gets from ``gates=True``.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hypermeta.parts import Part, register_placeholder
from hypermeta.spec import Init, Params, ParamSpec

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # the paper's temperature and stretch interval
GATE_SUFFIX = "gate"  # spec entries are named "<site module>.gate"
GATE_KINDS = ("gate", "gate_width")  # spec kinds: free logits per unit, one open fraction
GATE_INITIAL_LOGIT = 1.0  # P(gate != 0) = 0.93 at the start; Adam can still close it quickly
WIDTH_SLOPE = 4.0  # width gates: logit change per unit across the boundary (sharp: little noise)

GateMode = Literal["units", "width"]
# how gates behave in training: hard-concrete samples (Louizos et al.), the same without noise
# (the stretched sigmoid, deterministic), or exact 0/1 with the sigmoid's gradient
# (straight-through); in evaluation every estimator gives exact 0/1 gates
GateEstimator = Literal["hard_concrete", "deterministic", "ste"]
ESTIMATORS = ("hard_concrete", "deterministic", "ste")


class GateSite(NamedTuple):
    """Where structure gates act: the output of ``module`` along ``dim`` (``units`` wide).
    ``closable``: every gate may be 0 (a residual branch: the identity path remains)."""

    module: str
    units: int
    dim: int
    closable: bool = False


def initial_width(units: int) -> float:
    """Open fraction whose last unit sits at logit ``GATE_INITIAL_LOGIT`` (all units open)."""
    return 1.0 - (0.5 - GATE_INITIAL_LOGIT / WIDTH_SLOPE) / units


def gate_values(logits: Tensor, *, training: bool, keep_one: bool = True,
                estimator: GateEstimator = "hard_concrete") -> Tensor:
    """Gate multipliers from logits ``[..., units]``; in training by ``estimator``
    (``GateEstimator``), in evaluation exact 0/1 (with ``keep_one``, the top unit of each site
    always 1)."""
    if training and estimator == "hard_concrete":
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
    if training and estimator == "deterministic":  # the noise-free stretched sigmoid
        return (torch.sigmoid(logits) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
    hard = binary_gates(logits, keep_one=keep_one).to(logits.dtype)
    if training and estimator == "ste":  # forward exact 0/1, backward the sigmoid's gradient
        soft = torch.sigmoid(logits)
        return hard + soft - soft.detach()
    return hard


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
    """Mean expected fraction of active units over all gate rows of ``spec`` and all tasks
    (0 without gates). A gate row's ``fan_in`` is its site's number of units."""
    costs = [active_probability(unit_logits(params[n], k, units)).mean()
             for n, k, units in zip(spec.names, spec.kinds, spec.fan_in) if k in GATE_KINDS]
    if not costs:
        return torch.zeros(())
    return torch.stack(costs).mean()


class Gates(Part):
    """Per-task structure gates over a target's gate sites (``gates=True`` of a target).

    Arguments:
        mode: ``"units"``: one free gate logit per unit; ``"width"``: one generated open
            fraction per site, the open units always a prefix.
        sparsity: weight ``lambda`` of the expected open fraction in ``extra_loss`` (0: no
            extra loss; the cost is still reported by ``structure_cost``).
        estimator: the gates in training (``GateEstimator``): ``"hard_concrete"`` (default),
            ``"deterministic"`` (no noise) or ``"ste"`` (straight-through 0/1).

    ``held_open = True`` (a warm-up, set by ``fit`` for ``gates.warmup_steps``) opens every
    gate and drops the sparsity cost.

    The module it is installed on needs ``gate_sites()`` and ``pruned(masks)`` (the built-in
    ``MLP``, ``ResMLP``, ``Conv4`` and ``TransformerNet``: heads, feed-forward units, whole
    layers); ``merge`` returns the genuinely smaller network.
    """

    def __init__(self, mode: GateMode = "units", *, sparsity: float = 0.0,
                 estimator: GateEstimator = "hard_concrete") -> None:
        super().__init__()
        if mode not in ("units", "width"):
            raise ValueError(f"gate_mode must be 'units' or 'width', got {mode!r}")
        if not sparsity >= 0:
            raise ValueError(f"gate_sparsity must be >= 0, got {sparsity!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"gate_estimator must be one of {list(ESTIMATORS)}, got "
                             f"{estimator!r}")
        self.mode, self.sparsity, self.estimator = mode, float(sparsity), estimator
        # True during a warm-up: every gate open, no sparsity cost (set by ``fit``)
        self.held_open = False
        self.kind = "gate" if mode == "units" else "gate_width"
        self.sites: dict[str, GateSite] = {}
        self.rows = ParamSpec((), (), (), (), ())
        self.handles: list[RemovableHandle] = []

    def install(self, module: nn.Module) -> ParamSpec:
        sites = getattr(module, "gate_sites", None)
        if sites is None or not hasattr(module, "pruned"):
            raise ValueError(f"gates=True needs a target with gate_sites() and pruned(); "
                             f"{type(module).__name__} has none (built-in mlp, resmlp, conv4 and "
                             "transformer do)")
        for site in sites():
            owner = module.get_submodule(site.module)
            register_placeholder(owner, GATE_SUFFIX)
            hook = functools.partial(self._hook, site.module)
            self.handles.append(owner.register_forward_hook(hook))
            self.sites[site.module] = site
        units = tuple(s.units for s in self.sites.values())
        width = self.kind == "gate_width"
        self.rows = ParamSpec(
            tuple(f"{name}.{GATE_SUFFIX}" for name in self.sites),
            tuple(torch.Size([1 if width else u]) for u in units),
            (self.kind,) * len(units), units, units,
            # units: std 1, so each task's gates differ from the start; width: every unit open
            # and the last one at GATE_INITIAL_LOGIT (the sparsity cost has a gradient at once)
            tuple(Init(initial_width(u), 0.1) if width else Init(GATE_INITIAL_LOGIT, 1.0)
                  for u in units))
        return self.rows

    def _hook(self, site: str, module: nn.Module, inputs: tuple[Tensor, ...],
              output: Tensor) -> Tensor:
        # multiply the site's output by its gates along the site's channel dim (one task)
        if self.held_open:
            return output
        where = self.sites[site]
        logits = unit_logits(module.get_buffer(GATE_SUFFIX), self.kind, where.units)  # [units]
        values = gate_values(logits, training=self.training, keep_one=not where.closable,
                             estimator=self.estimator)
        shape = [1] * output.dim()
        shape[where.dim] = -1
        return output * values.reshape(shape)

    def initial_params(self, rows: ParamSpec) -> Params:
        """Every gate open, without noise: the constant offsets."""
        return rows.unflatten(rows.offsets())

    def structure_cost(self, params: Params) -> Tensor:
        """Expected fraction of open units (mean over sites and tasks)."""
        return structure_cost(params, self.rows)

    def extra_loss(self, params: Params) -> Tensor | None:
        """``sparsity * structure_cost``; ``None`` when ``sparsity`` is 0 or the gates are held
        open (a warm-up)."""
        if not self.sparsity or self.held_open:
            return None
        return self.sparsity * self.structure_cost(params)

    def masks(self, params: Params) -> dict[str, Tensor]:
        """Binary keep-masks per site from ONE task's gates; warns when a site that must not
        close would have lost every unit (its top unit is kept). Closable sites (residual
        branches) may close entirely."""
        masks = {}
        for name, site in self.sites.items():
            logits = unit_logits(params[f"{name}.{GATE_SUFFIX}"], self.kind, site.units)
            keep_one = not site.closable
            if keep_one and not bool((logits > 0).any()):
                warnings.warn(f"gates of {name!r} would remove every unit; keeping unit "
                              f"{int(logits.argmax())} so the network is never empty",
                              RuntimeWarning, stacklevel=4)
            masks[name] = binary_gates(logits, keep_one=keep_one)
        return masks

    def merge(self, module: nn.Module, params: Params) -> nn.Module:
        """Drop the closed units: ``module.pruned(masks)``, a genuinely smaller network."""
        pruned: nn.Module = module.pruned(self.masks(params))  # type: ignore[operator]
        return pruned


def count_flops(module: nn.Module, example: Tensor) -> int:
    """Floating-point operations of one forward pass, counted by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(example)
    return int(counter.get_total_flops())
