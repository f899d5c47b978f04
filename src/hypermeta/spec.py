"""The parameter currency: ``Params`` dicts and the ``ParamSpec`` a hypernetwork must produce."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]
"""Parameters by name. In batched form every tensor has a leading task dimension ``T``."""

KINDS = (
    "weight",  # a matrix or conv kernel: He / hyperfan initialisation
    "bias",  # additive offset of a weight layer: starts near zero
    "norm_weight",  # scale of a normalisation layer: starts at one
    "norm_bias",  # shift of a normalisation layer: starts at zero
    "lora_a",  # low-rank delta, input factor [r, fan_in]
    "lora_b",  # low-rank delta, output factor [fan_out, r]: starts at zero
    "film_scale",  # per-channel multiplicative delta (applied as 1 + scale): starts at zero
    "film_shift",  # per-channel additive delta: starts at zero
    "other",  # anything else (e.g. a 1-D learned vector): small normal
    "gate",  # structure gate logits (log alpha, see gates.py): start open
    "gate_width",  # one ordered-width gate per site: the open fraction of its units (gates.py)
)
GATE_KINDS = ("gate", "gate_width")
GATE_INITIAL_LOGIT = 1.0  # P(gate != 0) = 0.93 at the start; Adam can still close it quickly
WIDTH_SLOPE = 4.0  # width gates: logit change per unit across the boundary (sharp: little noise)


def initial_width(units: int) -> float:
    """Open fraction whose last unit sits at logit ``GATE_INITIAL_LOGIT`` (all units open)."""
    return 1.0 - (0.5 - GATE_INITIAL_LOGIT / WIDTH_SLOPE) / units


@dataclass(frozen=True)
class ParamSpec:
    """What a hypernetwork must produce: the names, shapes and kinds of the generated tensors.

    Derived from a target (``FunctionalTarget.spec``); hypernetworks depend on it alone.

    Arguments:
        names: parameter names as in ``module.named_parameters()``.
        shapes: the shape of each parameter for ONE task (no task dimension).
        kinds: one of ``KINDS`` per parameter; drives initialisation.
        fan_in: the fan-in of the layer each parameter belongs to (used by hyperfan init).
        fan_out: the fan-out of that layer.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    kinds: tuple[str, ...]
    fan_in: tuple[int, ...]
    fan_out: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.names)
        lengths = {len(self.shapes), len(self.kinds), len(self.fan_in), len(self.fan_out)}
        if lengths != {n}:
            raise ValueError(
                f"ParamSpec fields must have equal lengths; got names={n}, "
                f"shapes={len(self.shapes)}, kinds={len(self.kinds)}, "
                f"fan_in={len(self.fan_in)}, fan_out={len(self.fan_out)}"
            )
        if len(set(self.names)) != n:
            raise ValueError(f"ParamSpec names must be unique; got {list(self.names)}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ValueError(f"ParamSpec kinds {bad} are not among {list(KINDS)}")

    def __len__(self) -> int:
        return len(self.names)

    def sizes(self) -> tuple[int, ...]:
        """Number of scalars in each parameter, in spec order."""
        return tuple(math.prod(s) for s in self.shapes)

    def numel(self) -> int:
        """Total number of generated scalars for one task."""
        return sum(self.sizes())

    def unflatten(self, flat: Tensor) -> Params:
        """``[..., P]`` -> ``{name: [..., *shape]}`` (views, no copy)."""
        if flat.shape[-1] != self.numel():
            raise ValueError(
                f"flat parameters have {flat.shape[-1]} entries in the last dim; "
                f"the spec needs {self.numel()}"
            )
        lead = flat.shape[:-1]
        chunks = torch.split(flat, list(self.sizes()), dim=-1)
        return {
            name: chunk.reshape(*lead, *shape)
            for name, shape, chunk in zip(self.names, self.shapes, chunks)
        }

    def flatten(self, params: Params) -> Tensor:
        """``{name: [..., *shape]}`` -> ``[..., P]`` in spec order (inverse of ``unflatten``)."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"params lack spec entries {missing}")
        parts = []
        for name, shape in zip(self.names, self.shapes):
            t = params[name]
            lead = t.shape[: t.dim() - len(shape)]
            parts.append(t.reshape(*lead, -1))
        return torch.cat(parts, dim=-1)

    def he_std(self, mode: str = "fan_in") -> Tensor:
        """Per-parameter target std (one value per scalar, ``[P]``) used by hyperfan init.

        Weights get He's ``sqrt(2 / fan)`` (``mode`` = ``"fan_in"`` or ``"fan_out"``); low-rank
        input factors the same; gate logits 1 (so each task's gates differ from the start);
        every kind whose task-independent value is a constant (biases, norms, deltas) gets zero.
        """
        if mode not in ("fan_in", "fan_out"):
            raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
        fans = self.fan_in if mode == "fan_in" else self.fan_out
        parts = []
        for size, kind, fan in zip(self.sizes(), self.kinds, fans):
            std = math.sqrt(2.0 / max(fan, 1)) if kind in ("weight", "lora_a") else 0.0
            std = {"gate": 1.0, "gate_width": 0.1}.get(kind, std)
            parts.append(torch.full((size,), std))
        return torch.cat(parts) if parts else torch.zeros(0)

    def offsets(self) -> Tensor:
        """Per-parameter constant each kind starts from (``[P]``): 1 for norm scales,
        ``GATE_INITIAL_LOGIT`` for gate logits (open), else 0; a width gate starts with every
        unit open and its last unit at logit ``GATE_INITIAL_LOGIT`` (so the sparsity cost has
        a gradient from the first step)."""
        start = {"norm_weight": 1.0, "gate": GATE_INITIAL_LOGIT}
        parts = [torch.full((size,), initial_width(units) if kind == "gate_width"
                            else start.get(kind, 0.0))
                 for size, kind, units in zip(self.sizes(), self.kinds, self.fan_in)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def init_flat(self, generator: torch.Generator | None = None) -> Tensor:
        """A fresh task-independent parameter vector ``[P]``: He-normal weights, constants else."""
        std = self.he_std()
        noise = torch.randn(std.shape, generator=generator)
        # lora_a factors start small so the delta B @ A begins at exactly zero through B = 0.
        return self.offsets() + std * noise
