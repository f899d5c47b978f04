"""The ``Part`` protocol: anything a target generates beyond its plain tensors.

A ``FunctionalTarget`` generates the tensors ``generate=`` selects, and hands everything else it
generates to parts: low-rank and FiLM adapters (``hypermeta.adapters``), structure gates
(``hypermeta.gates``), a per-class head (``hypermeta.heads``), or a user's own part
(``FunctionalTarget(..., parts=[...])``). It knows them only through this protocol.

A part is an ``nn.Module`` child of its target, so it follows ``target.train()``/``eval()``
(its own ``.training``), ``.to()`` and ``.double()``. Its lifetime:

1. ``install(module)`` — once, on the target's private deep copy of the user's module: register
   a placeholder buffer (``register_placeholder``) for every tensor it generates, add forward
   hooks that read them (keep the handles), and return the spec rows it adds, each with its
   ``Init``. Every name a part generates is a placeholder at that dotted path, so
   ``functional_call(..., strict=True)`` feeds each task's values to the hooks.
2. Every forward: the hooks run inside ``vmap``, reading one task's placeholders.
3. ``extra_loss(params)`` — from the batched params ``{name: [T, ...]}``: a scalar to add to the
   task loss (a sparsity cost), or ``None``. Returned, never stored.
4. ``merge(module, params)`` — in ``materialize``: fold ONE task's values into a plain copy of the
   user's architecture (which has no placeholders and no hooks) and return it.

Nothing here imports the target or any built-in part.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from hypermeta.spec import Params, ParamSpec


class Part(nn.Module, abc.ABC):
    """Abstract base of every generated part of a target.

    Subclasses implement ``install`` and ``merge``; ``initial_params``, ``extra_loss``,
    ``free_names`` and ``check`` have defaults. Keep configuration on the part itself (hooks as
    ``functools.partial(self._hook, name)``) and only names, never submodules of the target's
    module, as attributes (a submodule attribute would register that module twice).

    Example (a per-task output bias, added after the last layer of an ``nn.Sequential``):
        >>> from hypermeta.spec import Init
        >>> class OutputBias(Part):
        ...     def install(self, module):
        ...         last = module.get_submodule("2")
        ...         register_placeholder(last, "task_bias")
        ...         self.handle = last.register_forward_hook(self._hook)
        ...         rows = (("2.task_bias",), (torch.Size([last.out_features]),), ("task_bias",))
        ...         return ParamSpec(*rows, (1,), (1,), (Init(std=0.1),))
        ...     def _hook(self, layer, inputs, output):
        ...         return output + layer.get_buffer("task_bias")
        ...     def merge(self, module, params):
        ...         module.get_submodule("2").bias.add_(params["2.task_bias"])
        ...         return module
    """

    @abc.abstractmethod
    def install(self, module: nn.Module) -> ParamSpec:
        """Install on ``module`` (the target's private copy, already holding the placeholders
        of the parts installed before); return the rows this part adds to the spec."""

    @abc.abstractmethod
    def merge(self, module: nn.Module, params: Params) -> nn.Module:
        """Fold ONE task's ``params`` (no T dim) into ``module``, a plain copy of the user's
        architecture holding that task's plain tensors (and every earlier part's merge);
        return the module to keep (``module`` itself, changed in place, or a new one)."""

    def initial_params(self, rows: ParamSpec) -> Params:
        """Task-independent start of this part's ``rows`` (one task): by default one draw of
        their ``Init`` with a fixed seed (deterministic; random where ``std`` > 0)."""
        return rows.unflatten(rows.init_flat(torch.Generator().manual_seed(0)))

    def extra_loss(self, params: Params) -> Tensor | None:
        """A scalar to add to the task loss, from the batched ``params``; ``None``: nothing."""
        return None

    @property
    def free_names(self) -> tuple[str, ...]:
        """Names this part takes in ``params`` that are NOT spec rows, because their shape is
        free (a per-class head: ``[T, N, D]`` for any N). Placeholders too. Default: none."""
        return ()

    def check(self, params: Params, num_tasks: int) -> None:
        """Raise a clear error unless ``params`` hold this part's ``free_names`` with usable
        shapes for ``num_tasks`` tasks (spec rows are checked by the target)."""


def register_placeholder(owner: nn.Module, leaf: str) -> None:
    """Make ``owner.<leaf>`` a generated tensor: an empty non-persistent buffer that keeps the
    name, so ``functional_call(strict=True)`` demands a value for it on every call. An existing
    parameter of that name is removed first (never stored: it is generated now)."""
    if hasattr(owner, leaf):
        delattr(owner, leaf)
    owner.register_buffer(leaf, torch.empty(0), persistent=False)
