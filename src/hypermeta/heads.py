"""Generated heads: a target's final ``nn.Linear`` computed from the support set.

``ClassHead`` generates a classifier one row per class, so the way count is free;
``RidgeHead`` fits a regression head in closed form (ridge regression on the support
features). ``PerClassHead`` is the part (``hypermeta.parts``) that makes a target's final
``nn.Linear`` take either (``FunctionalTarget(..., class_head="head")``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hypermeta.parts import Part, register_placeholder
from hypermeta.spec import Params, ParamSpec


def class_sums(features: Tensor, labels: Tensor, ways: int,
               mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sum of the support features of each class and their count: ``[T, S, D]``, labels
    ``[T, S]`` -> ``([T, ways, D], [T, ways, 1])`` (padded examples, ``mask`` False, left out)."""
    onehot = torch.nn.functional.one_hot(labels.long(), ways).to(features.dtype)  # (T, S, N)
    if mask is not None:
        onehot = onehot * mask.to(features.dtype)[..., None]
    return onehot.transpose(1, 2) @ features, onehot.sum(1)[..., None]


def class_means(features: Tensor, labels: Tensor, ways: int,
                mask: Tensor | None = None) -> Tensor:
    """Mean support feature of each class: ``[T, S, D]``, labels ``[T, S]`` -> ``[T, ways, D]``
    (padded support examples, ``mask`` False, are left out; a class without any is zero)."""
    sums, counts = class_sums(features, labels, ways, mask)
    return sums / counts.clamp_min(1.0)


class ClassHead(nn.Module):
    """Generates a classifier head one class at a time, so the number of ways is free.

    Class ``c``'s weight row and bias come from the mean feature ``mu_c`` of its support
    examples (and the mean over all classes, the task context), as in "Few-shot image
    recognition by predicting parameters from activations" (Qiao et al., CVPR 2018) and the
    CNAPs classifier (Requeima et al., NeurIPS 2019). It starts as the prototypical-network
    head ``w_c = 2 mu_c``, ``b_c = -|mu_c|^2`` (softmax-equal to negative squared Euclidean
    distances, Snell et al. 2017) and learns a correction from a zero-initialised MLP.

    With ``descriptions=True`` each class also has a description (e.g. its name or a sentence
    about it, as a target input): its feature ``d_c`` joins the support examples as a learned
    number ``beta`` of pseudo-examples, ``p_c = (sum of support features + beta d_c) /
    (n_c + beta)``, and the correction also reads ``d_c`` and whether the class has support.
    A class with no support example is then generated from its description alone
    (zero-shot), and any mix of described and labelled classes works.

    Arguments:
        feature_dim: width ``D`` of the features the head reads.
        hidden: width of the correction MLP.
        descriptions: read class descriptions (``forward(..., described=)``).

    Example:
        >>> head = ClassHead(64)
        >>> weight, bias = head(torch.randn(2, 10, 64), torch.arange(5).repeat(2, 2), ways=5)
        >>> weight.shape, bias.shape
        (torch.Size([2, 5, 64]), torch.Size([2, 5]))
    """

    def __init__(self, feature_dim: int, hidden: int = 256, *, descriptions: bool = False) -> None:
        super().__init__()
        if feature_dim < 1 or hidden < 1:
            raise ValueError(f"feature_dim and hidden must be >= 1; got {feature_dim}, {hidden}")
        self.feature_dim, self.descriptions = feature_dim, descriptions
        last = nn.Linear(hidden, feature_dim + 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        width = 4 * feature_dim + 1 if descriptions else 2 * feature_dim
        self.correction = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), last)
        if descriptions:
            self.log_beta = nn.Parameter(torch.zeros(()))  # beta = 1 pseudo-example at start

    def forward(self, features: Tensor, labels: Tensor, ways: int,
                mask: Tensor | None = None, described: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """Support ``features [T, S, D]`` and integer ``labels [T, S]`` in ``0..ways-1`` (and,
        with descriptions, the description features ``described [T, ways, D]``) ->
        ``(weight [T, ways, D], bias [T, ways])``."""
        if features.dim() != 3 or features.shape[-1] != self.feature_dim:
            raise ValueError(f"features must have shape [T, S, {self.feature_dim}], got "
                             f"{list(features.shape)}")
        if self.descriptions:
            expected = [features.shape[0], ways, self.feature_dim]
            if described is None or list(described.shape) != expected:
                got = None if described is None else list(described.shape)
                raise ValueError(f"a class head with descriptions needs described = {expected} "
                                 f"(one description per class); got {got}")
            sums, counts = class_sums(features, labels, ways, mask)  # (T, N, D), (T, N, 1)
            beta = self.log_beta.exp()
            proto = (sums + beta * described) / (counts + beta)
            mu = sums / counts.clamp_min(1.0)
            inputs = [proto, proto.mean(1, keepdim=True).expand_as(proto), mu, described,
                      (counts > 0).to(features.dtype)]
        else:
            proto = class_means(features, labels, ways, mask)  # (T, N, D)
            inputs = [proto, proto.mean(1, keepdim=True).expand_as(proto)]
        delta = self.correction(torch.cat(inputs, dim=-1))  # (T, N, D + 1)
        weight = 2 * proto + delta[..., :-1]
        bias = -(proto * proto).sum(-1) + delta[..., -1]
        return weight, bias


class PerClassHead(Part):
    """A target's final ``nn.Linear`` with one generated row per class (``class_head=`` of a
    target): its params are ``weight [T, N, D]`` and ``bias [T, N]`` for any N, so they are
    ``free_names``, never spec rows.

    Arguments:
        module_name: the name of the ``nn.Linear`` (with a bias) in the target's module.
    """

    def __init__(self, module_name: str) -> None:
        super().__init__()
        self.module_name = module_name
        self.feature_dim = 0  # D, the width the head reads; set by install
        prefix = f"{module_name}." if module_name else ""
        self.names = (prefix + "weight", prefix + "bias")

    def install(self, module: nn.Module) -> ParamSpec:
        try:
            head = module.get_submodule(self.module_name)
        except AttributeError:
            raise ValueError(f"class_head={self.module_name!r} names no submodule of "
                             f"{type(module).__name__}") from None
        if not isinstance(head, nn.Linear) or head.bias is None:
            raise ValueError(f"class_head={self.module_name!r} must be an nn.Linear with a bias; "
                             f"got {type(head).__name__}")
        self.feature_dim = head.in_features
        for leaf in ("weight", "bias"):
            register_placeholder(head, leaf)
        return ParamSpec((), (), (), (), ())

    @property
    def free_names(self) -> tuple[str, ...]:
        return self.names

    def check(self, params: Params, num_tasks: int) -> None:
        weight, bias = (tuple(params[n].shape) for n in self.names)
        if len(weight) != 3 or weight[0] != num_tasks or weight[2] != self.feature_dim \
                or bias != weight[:2]:
            raise ValueError(f"class head params must be {self.names[0]} [T, N, "
                             f"{self.feature_dim}] and {self.names[1]} [T, N] with T = "
                             f"{num_tasks}; got {list(weight)} and {list(bias)}")

    def merge(self, module: nn.Module, params: Params) -> nn.Module:
        """Put a plain ``nn.Linear`` with one row per class in the head's place."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"params lack the class head {missing}")
        weight, bias = (params[n] for n in self.names)
        if weight.dim() != 2 or tuple(bias.shape) != tuple(weight.shape[:1]):
            raise ValueError(f"materialize takes ONE task's class head, [N, D] and [N]; "
                             f"got {list(weight.shape)} and {list(bias.shape)}")
        head = nn.Linear(weight.shape[1], weight.shape[0]).to(weight)
        head.weight.copy_(weight)
        head.bias.copy_(bias)
        owner_name, _, leaf = self.module_name.rpartition(".")
        setattr(module.get_submodule(owner_name), leaf, head)
        return module


class RidgeHead(nn.Module):
    """A regression head fitted per task in closed form: ridge regression of the support
    targets on the support features, ``[W b] = argmin |[F 1][W b]^T - r|^2 + lam |W|^2``
    + lam_b b^2`` (R2-D2, Bertinetto et al., ICLR 2019), differentiable, with ``lam`` and
    ``lam_b`` learned (log scale; both start at ``l2``). Shrinking the bias matters when K is
    small: an offset fitted to 5 ratings is mostly noise.
    The rest of the network (trunk, generated or shared) is trained through it, so every task
    gets an exactly fitted linear readout of features that meta-training shapes.

    ``r`` is what the head must add: the support targets minus the network's output with a
    zero head (for a target that adds terms after its head, e.g. a residual over a feature).

    Arguments:
        feature_dim: width ``D`` of the features the head reads.
        l2: initial ``lam`` and ``lam_b``.
    """

    descriptions = False

    def __init__(self, feature_dim: int, l2: float = 1.0) -> None:
        super().__init__()
        if feature_dim < 1 or l2 <= 0:
            raise ValueError(f"need feature_dim >= 1 and l2 > 0; got {feature_dim}, {l2}")
        self.feature_dim = feature_dim
        self.log_l2 = nn.Parameter(torch.tensor(float(l2)).log())
        self.log_bias_l2 = nn.Parameter(torch.tensor(float(l2)).log())

    def forward(self, features: Tensor, residual: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``features [T, S, D]``, ``residual [T, S, O]`` -> weight ``[T, O, D]``, bias
        ``[T, O]`` (padded examples, ``mask`` False, weigh nothing)."""
        ones = features.new_ones(*features.shape[:2], 1)
        design = torch.cat([features, ones], dim=-1)  # (T, S, D+1)
        if mask is not None:
            keep = mask.to(features.dtype)[..., None]
            design, residual = design * keep, residual * keep
        penalty = torch.eye(self.feature_dim + 1, dtype=features.dtype, device=features.device)
        penalty = penalty * self.log_l2.exp()
        penalty[-1, -1] = self.log_bias_l2.exp()  # the bias (the user's offset) has its own
        gram = design.transpose(1, 2) @ design + penalty
        solution = torch.linalg.solve(gram, design.transpose(1, 2) @ residual)  # (T, D+1, O)
        return solution[:, :-1].transpose(1, 2), solution[:, -1]
