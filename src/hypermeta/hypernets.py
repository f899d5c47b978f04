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
from torch import Tensor, nn

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


def class_means(features: Tensor, labels: Tensor, ways: int,
                mask: Tensor | None = None) -> Tensor:
    """Mean support feature of each class: ``[T, S, D]``, labels ``[T, S]`` -> ``[T, ways, D]``
    (padded support examples, ``mask`` False, are left out)."""
    onehot = torch.nn.functional.one_hot(labels.long(), ways).to(features.dtype)  # (T, S, N)
    if mask is not None:
        onehot = onehot * mask.to(features.dtype)[..., None]
    counts = onehot.sum(1).clamp_min(1.0)[..., None]  # (T, N, 1)
    return onehot.transpose(1, 2) @ features / counts


class ClassHead(nn.Module):
    """Generates a classifier head one class at a time, so the number of ways is free.

    Class ``c``'s weight row and bias come from the mean feature ``mu_c`` of its support
    examples (and the mean over all classes, the task context), as in "Few-shot image
    recognition by predicting parameters from activations" (Qiao et al., CVPR 2018) and the
    CNAPs classifier (Requeima et al., NeurIPS 2019). It starts as the prototypical-network
    head ``w_c = 2 mu_c``, ``b_c = -|mu_c|^2`` (softmax-equal to negative squared Euclidean
    distances, Snell et al. 2017) and learns a correction from a zero-initialised MLP.

    Arguments:
        feature_dim: width ``D`` of the features the head reads.
        hidden: width of the correction MLP.

    Example:
        >>> head = ClassHead(64)
        >>> weight, bias = head(torch.randn(2, 10, 64), torch.arange(5).repeat(2, 2), ways=5)
        >>> weight.shape, bias.shape
        (torch.Size([2, 5, 64]), torch.Size([2, 5]))
    """

    def __init__(self, feature_dim: int, hidden: int = 256) -> None:
        super().__init__()
        if feature_dim < 1 or hidden < 1:
            raise ValueError(f"feature_dim and hidden must be >= 1; got {feature_dim}, {hidden}")
        self.feature_dim = feature_dim
        last = nn.Linear(hidden, feature_dim + 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.correction = nn.Sequential(nn.Linear(2 * feature_dim, hidden), nn.ReLU(), last)

    def forward(self, features: Tensor, labels: Tensor, ways: int,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Support ``features [T, S, D]`` and integer ``labels [T, S]`` in ``0..ways-1`` ->
        ``(weight [T, ways, D], bias [T, ways])``."""
        if features.dim() != 3 or features.shape[-1] != self.feature_dim:
            raise ValueError(f"features must have shape [T, S, {self.feature_dim}], got "
                             f"{list(features.shape)}")
        mu = class_means(features, labels, ways, mask)  # (T, N, D)
        context = mu.mean(1, keepdim=True).expand_as(mu)
        delta = self.correction(torch.cat([mu, context], dim=-1))  # (T, N, D + 1)
        weight = 2 * mu + delta[..., :-1]
        bias = -(mu * mu).sum(-1) + delta[..., -1]
        return weight, bias
