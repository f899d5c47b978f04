"""Weight generators: ``[T, Z]`` task embeddings -> ``{name: [T, *shape]}`` target params.

All three start from hyperfan initialisation (Chang, Flokas & Lipson, "Principled Weight
Initialization for Hypernetworks", ICLR 2020): for ``z ~ N(0, I)`` every generated weight tensor
has about He's std ``sqrt(2 / fan_in)`` of its target layer (``init="hyperfan_out"``: fan_out), and
biases, norm shifts and deltas start at (or near) zero, norm scales at one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

# moved to hypermeta.heads; re-exported so ``from hypermeta.hypernets import ClassHead`` works
from hypermeta.heads import ClassHead as ClassHead
from hypermeta.heads import class_means as class_means
from hypermeta.registry import HYPERNETS, BuildContext
from hypermeta.spec import Params, ParamSpec

HyperfanMode = Literal["hyperfan_in", "hyperfan_out"]


def _trunk(in_dim: int, hidden: Sequence[int]) -> tuple[nn.Sequential, int]:
    """ReLU MLP with He init and zero biases, so E[h^2] = E[z^2] = 1 at every layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        linear = nn.Linear(in_dim, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers), in_dim


def _fan_mode(init: HyperfanMode) -> str:
    if init not in ("hyperfan_in", "hyperfan_out"):
        raise ValueError(f"init must be 'hyperfan_in' or 'hyperfan_out', got {init!r}")
    return "fan_in" if init == "hyperfan_in" else "fan_out"


def _check_z(z: Tensor, z_dim: int) -> None:
    if z.dim() != 2 or z.shape[1] != z_dim:
        raise ValueError(f"z must have shape [T, {z_dim}], got {list(z.shape)}")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class _HyperNet(nn.Module):
    """What every generator shares: a spec, an embedding width, the compression ratio."""

    spec: ParamSpec
    z_dim: int

    def __init__(self, spec: ParamSpec) -> None:
        super().__init__()
        if len(spec) == 0:
            raise ValueError("the spec is empty: nothing to generate (a target with only a "
                             "per-class head needs no hypernetwork; pass hypernet=None)")

    @property
    def compression_ratio(self) -> float:
        """This generator's trainable parameter count over one target's generated parameters.

        The one definition used everywhere: below 1 means storing the generator is cheaper than
        storing a single generated network.
        """
        return count_parameters(self) / self.spec.numel()

    def set_base(self, flat: Tensor) -> None:
        """Make ``flat`` ``[P]`` the task-independent part of the output (e.g. a pre-trained
        target), keeping the task-dependent part as it is."""
        raise NotImplementedError


class MLPHyperNet(_HyperNet):
    """Embedding -> ReLU hidden layers -> one linear head emitting every generated parameter.

    Arguments:
        spec: what to generate (``FunctionalTarget.spec``).
        z_dim: width of the task embedding.
        hidden: widths of the hidden layers.
        init: ``"hyperfan_in"`` (default) or ``"hyperfan_out"``.

    Example:
        >>> hyper = MLPHyperNet(target.spec, z_dim=64)
        >>> params = hyper(torch.randn(8, 64))    # {name: [8, *shape]}
    """

    def __init__(self, spec: ParamSpec, z_dim: int, hidden: Sequence[int] = (128, 128), *,
                 init: HyperfanMode = "hyperfan_in") -> None:
        super().__init__(spec)
        self.spec, self.z_dim = spec, z_dim
        self.trunk, width = _trunk(z_dim, hidden)
        self.head = nn.Linear(width, spec.numel())
        # Hyperfan: each head row j emits w_j = sum_k H_jk h_k with E[h_k^2] = 1, so
        # Var(w_j) = width * Var(H_j); pick Var(H_j) = std_j^2 / width.
        std = spec.he_std(_fan_mode(init)) / math.sqrt(width)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn_like(self.head.weight) * std[:, None])
            self.head.bias.copy_(spec.offsets())

    def forward(self, z: Tensor) -> Params:
        _check_z(z, self.z_dim)
        return self.spec.unflatten(self.head(self.trunk(z)))  # (T, P) -> {name: [T, *shape]}

    @torch.no_grad()
    def set_base(self, flat: Tensor) -> None:
        self.head.bias.copy_(flat)


class ChunkedHyperNet(_HyperNet):
    """One small shared generator emits the flat parameter vector chunk by chunk.

    Each chunk ``c`` has a learned embedding ``e_c``; the generator maps ``[z, e_c]`` to
    ``chunk_size`` numbers (von Oswald et al., "Continual learning with hypernetworks",
    ICLR 2020). The generator is far smaller than the target, so ``compression_ratio`` < 1 is
    typical. Hyperfan in chunked form: the raw chunk outputs start with unit variance and a fixed
    per-parameter scale maps them to He's std (biases and deltas to a tenth of ``1/sqrt(fan_in)``).

    Arguments:
        spec: what to generate.
        z_dim: width of the task embedding.
        chunk_size: numbers emitted per chunk.
        chunk_dim: width of the learned chunk embeddings.
        hidden: widths of the shared generator's hidden layers.
        init: ``"hyperfan_in"`` (default) or ``"hyperfan_out"``.
    """

    def __init__(self, spec: ParamSpec, z_dim: int, *, chunk_size: int = 256,
                 chunk_dim: int = 16, hidden: Sequence[int] = (64, 64),
                 init: HyperfanMode = "hyperfan_in") -> None:
        super().__init__(spec)
        if chunk_size < 1 or chunk_dim < 1:
            raise ValueError(f"chunk_size and chunk_dim must be >= 1; got {chunk_size}, "
                             f"{chunk_dim}")
        self.spec, self.z_dim, self.chunk_size = spec, z_dim, chunk_size
        num_params = spec.numel()
        self.num_chunks = math.ceil(num_params / chunk_size)
        self.chunk_embeddings = nn.Parameter(torch.randn(self.num_chunks, chunk_dim))
        self.trunk, width = _trunk(z_dim + chunk_dim, hidden)
        self.head = nn.Linear(width, chunk_size)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(width))  # raw outputs ~ unit var
        nn.init.zeros_(self.head.bias)
        mode = _fan_mode(init)
        small = torch.cat([torch.full((size,), 0.1 / math.sqrt(max(fan, 1)))
                           for size, fan in zip(spec.sizes(), spec.fan_in)])
        he = spec.he_std(mode)
        self.register_buffer("scale", torch.where(he > 0, he, small), persistent=False)
        self.register_buffer("offset", spec.offsets())  # persistent: set_base may change it

    def forward(self, z: Tensor) -> Params:
        _check_z(z, self.z_dim)
        num_tasks = z.shape[0]
        inputs = torch.cat([  # (T, C, Z + D): every task paired with every chunk embedding
            z[:, None, :].expand(num_tasks, self.num_chunks, self.z_dim),
            self.chunk_embeddings[None].expand(num_tasks, -1, -1),
        ], dim=-1)
        raw = self.head(self.trunk(inputs)).reshape(num_tasks, -1)  # (T, C * chunk_size)
        flat = raw[:, : self.spec.numel()] * self.scale + self.offset  # (T, P)
        return self.spec.unflatten(flat)

    @torch.no_grad()
    def set_base(self, flat: Tensor) -> None:
        self.get_buffer("offset").copy_(flat)


class DeltaHyperNet(_HyperNet):
    """A learned task-independent base plus a per-task delta: ``params = base + head(z)``.

    Pair it with ``FunctionalTarget(..., adapter="lowrank", rank=r)`` (LoRA-style factors
    ``A [r, in]``, ``B [out, r]``) or ``adapter="film"`` (per-channel scale and shift): the
    target's own weights stay the shared base and only small deltas are generated; for Linear
    and Conv2d layers the low-rank delta is applied as two thin products, so a batch of T tasks
    never holds T full weight matrices. With ``adapter="full"`` it generates whole tensors as a
    learned base (e.g. ``base=target.initial_params()``, a pre-trained target) plus a delta.

    The delta head starts at zero (as LoRA's ``B``), so every task starts at the base.

    Arguments:
        spec: what to generate.
        z_dim: width of the task embedding.
        hidden: widths of the delta generator's hidden layers.
        base: starting value of the base for one task (no T dim); default: ``spec`` init
            (He-normal weights and ``A``, zero ``B``/FiLM/biases, unit norm scales).
    """

    def __init__(self, spec: ParamSpec, z_dim: int, hidden: Sequence[int] = (64,), *,
                 base: Params | None = None) -> None:
        super().__init__(spec)
        self.spec, self.z_dim = spec, z_dim
        start = spec.init_flat() if base is None else spec.flatten(base).detach().float()
        self.base = nn.Parameter(start.clone())
        self.trunk, width = _trunk(z_dim, hidden)
        self.head = nn.Linear(width, spec.numel())
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, z: Tensor) -> Params:
        _check_z(z, self.z_dim)
        return self.spec.unflatten(self.base + self.head(self.trunk(z)))  # (T, P)

    @torch.no_grad()
    def set_base(self, flat: Tensor) -> None:
        self.base.copy_(flat)


class SplitHyperNet(_HyperNet):
    """Two generators for one spec: ``main`` for most rows and ``side`` for the rows of the
    given ``kinds`` (e.g. structure gates: ``GATE_KINDS``), both from the same embedding.

    With ``detach`` the side generator reads the embedding without gradient, so its loss (a
    gate's sparsity cost, the gradient through a gate) never reaches the encoder or ``main``.
    Its parameters are ``side_parameters()`` (``fit`` can give them their own learning rate).

    Example:
        >>> rest, gates = split_spec(target.spec, GATE_KINDS)
        >>> hyper = SplitHyperNet(MLPHyperNet(rest, 64), MLPHyperNet(gates, 64, (32,)),
        ...                       target.spec, detach=True)
    """

    def __init__(self, main: nn.Module, side: nn.Module, spec: ParamSpec, *,
                 detach: bool = False) -> None:
        super().__init__(spec)
        self.main, self.side, self.spec, self.detach = main, side, spec, detach
        self.z_dim = int(getattr(main, "z_dim"))  # noqa: B009
        parts: list[ParamSpec] = [main.spec, side.spec]  # type: ignore[list-item]
        covered = sorted(n for part in parts for n in part.names)
        if covered != sorted(spec.names):
            raise ValueError("main and side generators must cover the spec's entries exactly "
                             "once")

    def forward(self, z: Tensor) -> Params:
        _check_z(z, self.z_dim)
        out: Params = {**self.main(z), **self.side(z.detach() if self.detach else z)}
        return {name: out[name] for name in self.spec.names}

    def side_parameters(self) -> list[nn.Parameter]:
        return list(self.side.parameters())

    @torch.no_grad()
    def set_base(self, flat: Tensor) -> None:
        values = self.spec.unflatten(flat)
        for part in (self.main, self.side):
            sub: ParamSpec = part.spec  # type: ignore[assignment]
            part.set_base(sub.flatten({n: values[n] for n in sub.names}))  # type: ignore[operator]


def split_spec(spec: ParamSpec, kinds: Sequence[str]) -> tuple[ParamSpec, ParamSpec]:
    """``spec`` cut into (rows of other kinds, rows of ``kinds``)."""
    picked = [n for n, k in zip(spec.names, spec.kinds) if k in kinds]
    return spec.subset([n for n in spec.names if n not in set(picked)]), spec.subset(picked)


# ------------------------------------------------------------ builders (config -> generator)
# Each takes the BuildContext positionally (``ctx.spec``, ``ctx.z_dim``, ``ctx.target``) and
# its config keywords; the signature types the config section ``hypernet: {kind: NAME, ...}``.
def _context(ctx: BuildContext) -> tuple[ParamSpec, int]:
    if ctx.spec is None or ctx.z_dim is None:
        raise ValueError("a hypernetwork builder needs ctx.spec and ctx.z_dim")
    return ctx.spec, int(ctx.z_dim)


def _widths(hidden: list[int]) -> list[int]:
    if any(w < 1 for w in hidden):
        raise ValueError(f"hypernet.hidden widths must be >= 1, got {hidden}")
    return hidden


@HYPERNETS.register("mlp")
def build_mlp_hypernet(ctx: BuildContext, /, *, hidden: list[PositiveInt] = [128],  # noqa: B006
                       init: HyperfanMode = "hyperfan_in") -> MLPHyperNet:
    """``MLPHyperNet``: one linear head emits every generated tensor."""
    spec, z_dim = _context(ctx)
    return MLPHyperNet(spec, z_dim, hidden=_widths(hidden), init=init)


@HYPERNETS.register("chunked")
def build_chunked_hypernet(ctx: BuildContext, /, *, hidden: list[PositiveInt] = [128],  # noqa: B006
                           chunk_size: PositiveInt = 256, chunk_dim: PositiveInt = 16,
                           init: HyperfanMode = "hyperfan_in") -> ChunkedHyperNet:
    """``ChunkedHyperNet``: a shared generator emits the parameters chunk by chunk."""
    spec, z_dim = _context(ctx)
    if chunk_size < 1 or chunk_dim < 1:
        raise ValueError(f"chunk_size and chunk_dim must be >= 1; got {chunk_size}, {chunk_dim}")
    return ChunkedHyperNet(spec, z_dim, chunk_size=chunk_size, chunk_dim=chunk_dim,
                           hidden=_widths(hidden), init=init)


@HYPERNETS.register("delta")
def build_delta_hypernet(ctx: BuildContext, /, *,
                         hidden: list[PositiveInt] = [128]) -> DeltaHyperNet:  # noqa: B006
    """``DeltaHyperNet``: a learned base (the target's own initial values) plus a delta."""
    spec, z_dim = _context(ctx)
    base = ctx.target.initial_params() if ctx.target is not None else None
    return DeltaHyperNet(spec, z_dim, hidden=_widths(hidden), base=base)
