"""The parameter currency: ``Params`` dicts and the ``ParamSpec`` a hypernetwork must produce."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]
"""Parameters by name. In batched form every tensor has a leading task dimension ``T``."""


@dataclass(frozen=True)
class Init:
    """How one generated tensor starts: ``offset + std * N(0, 1)`` per scalar.

    ``offset`` is its task-independent value; ``std`` its spread across tasks at the start
    (what hyperfan initialisation aims for). With ``he=True`` the std is multiplied by He's
    ``sqrt(2 / fan)``, ``fan`` the row's ``fan_in`` or ``fan_out`` as the hyperfan mode says.
    """

    offset: float = 0.0
    std: float = 0.0
    he: bool = False

    def std_for(self, fan: int) -> float:
        """The std of a row with this fan."""
        return self.std * math.sqrt(2.0 / max(fan, 1)) if self.he else self.std


GENERIC_INITS: dict[str, Init] = {
    "weight": Init(std=1.0, he=True),  # a matrix or conv kernel: He / hyperfan initialisation
    "bias": Init(),  # additive offset of a weight layer: starts at zero
    "norm_weight": Init(offset=1.0),  # scale of a normalisation layer: starts at one
    "norm_bias": Init(),  # shift of a normalisation layer: starts at zero
    "other": Init(),  # anything else (e.g. a 1-D learned vector): starts at zero
}
"""The kinds a target's own tensors have, and how each starts. A part's rows (see
``hypermeta.parts``) may use other kind strings, each with an explicit ``Init``."""
KINDS = tuple(GENERIC_INITS)


@dataclass(frozen=True)
class ParamSpec:
    """What a hypernetwork must produce: the names, shapes and kinds of the generated tensors.

    Derived from a target (``FunctionalTarget.spec``); hypernetworks depend on it alone.

    Arguments:
        names: parameter names as in ``module.named_parameters()``.
        shapes: the shape of each parameter for ONE task (no task dimension).
        kinds: what each parameter is: one of ``KINDS``, or a part's own kind string (then
            ``inits`` must give its initialisation).
        fan_in: the fan-in of the layer each parameter belongs to (used by hyperfan init).
        fan_out: the fan-out of that layer.
        inits: how each parameter starts; empty: every kind's default (``GENERIC_INITS``).

    Example:
        >>> spec = ParamSpec(("w",), (torch.Size([3, 2]),), ("weight",), (2,), (3,))
        >>> spec.inits == (GENERIC_INITS["weight"],)
        True
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    kinds: tuple[str, ...]
    fan_in: tuple[int, ...]
    fan_out: tuple[int, ...]
    inits: tuple[Init, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.names)
        lengths = {len(self.shapes), len(self.kinds), len(self.fan_in), len(self.fan_out)}
        if self.inits:
            lengths.add(len(self.inits))
        if lengths != {n}:
            raise ValueError(
                f"ParamSpec fields must have equal lengths; got names={n}, "
                f"shapes={len(self.shapes)}, kinds={len(self.kinds)}, "
                f"fan_in={len(self.fan_in)}, fan_out={len(self.fan_out)}, inits={len(self.inits)}"
            )
        if len(set(self.names)) != n:
            raise ValueError(f"ParamSpec names must be unique; got {list(self.names)}")
        if not self.inits:
            bad = [k for k in self.kinds if k not in GENERIC_INITS]
            if bad:
                raise ValueError(f"ParamSpec kinds {bad} are not among {list(KINDS)}; other "
                                 "kinds need an explicit initialisation (inits=)")
            # a frozen dataclass fills its own derived field this way
            object.__setattr__(self, "inits", tuple(GENERIC_INITS[k] for k in self.kinds))
        elif not all(isinstance(i, Init) for i in self.inits):
            raise TypeError("ParamSpec inits must be hypermeta.spec.Init values")

    @classmethod
    def concat(cls, specs: Sequence[ParamSpec]) -> ParamSpec:
        """One spec with the rows of ``specs`` in order (names must stay unique)."""
        return cls(*(tuple(x for s in specs for x in getattr(s, field))
                     for field in ("names", "shapes", "kinds", "fan_in", "fan_out", "inits")))

    def subset(self, names: Sequence[str]) -> ParamSpec:
        """The rows named ``names``, in this spec's order."""
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise KeyError(f"spec has no entries {unknown}")
        keep = [i for i, n in enumerate(self.names) if n in set(names)]
        return ParamSpec(*(tuple(getattr(self, field)[i] for i in keep)
                           for field in ("names", "shapes", "kinds", "fan_in", "fan_out",
                                         "inits")))

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

        Each row's ``Init``: weights get He's ``sqrt(2 / fan)`` (``mode`` = ``"fan_in"`` or
        ``"fan_out"``); every kind whose task-independent value is a constant (biases, norms)
        gets zero; a part's rows what their ``Init`` says.
        """
        if mode not in ("fan_in", "fan_out"):
            raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
        fans = self.fan_in if mode == "fan_in" else self.fan_out
        parts = [torch.full((size,), init.std_for(fan))
                 for size, init, fan in zip(self.sizes(), self.inits, fans)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def offsets(self) -> Tensor:
        """Per-parameter constant each row starts from (``[P]``): its ``Init.offset`` (1 for
        norm scales, 0 for weights and biases)."""
        parts = [torch.full((size,), init.offset) for size, init in zip(self.sizes(), self.inits)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def init_flat(self, generator: torch.Generator | None = None) -> Tensor:
        """A fresh task-independent parameter vector ``[P]``: ``offset + std * N(0, 1)``."""
        std = self.he_std()
        noise = torch.randn(std.shape, generator=generator)
        return self.offsets() + std * noise
