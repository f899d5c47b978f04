"""The generated actor-critic: ``context --encoder--> z --hypernet--> policy and value weights``.

``PolicyNet`` is a plain ``nn.Module`` (no stable-baselines3 import) that reads the flat
observation ``[B, obs_dim + context_dim]`` of ``hypermeta.rl.envs`` and returns the action
output (logits, or the Gaussian mean) and the value. Three variants share the architecture
and the initialisation, so a comparison at equal environment steps is a comparison of how
the context is used:

- ``hypernet``: the context is the task descriptor: a ``FeatureEncoder`` embeds it and one
  ``DeltaHyperNet`` per head generates that head's whole network (vector observations) or
  FiLM scales and shifts of every layer (image observations), per sample;
- ``concat``: the context is appended to the observation of one shared network;
- ``blind``: the context is dropped (domain randomisation).

Initialisation: a hypernetwork whose output starts as a normal policy. The generators are
``DeltaHyperNet`` s whose base is the target's own SB3-style orthogonal initialisation (gain
sqrt(2) hidden, 0.01 policy head, 1 value head) and whose delta head starts at zero, so at
step 0 every context's policy *is* that normally initialised policy (naive hypernetwork
initialisation fails in RL: Beck et al., arXiv 2210.11348; their bias-HyperInit is this).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from hypermeta.encoders import FeatureEncoder
from hypermeta.episodes import Episode
from hypermeta.hypernets import DeltaHyperNet
from hypermeta.networks import MLP
from hypermeta.target import FunctionalTarget

Variant = Literal["hypernet", "concat", "blind"]
VARIANTS: tuple[str, ...] = ("hypernet", "concat", "blind")


class GameCNN(nn.Module):
    """MinAtar's network: conv 3x3 (16) -> ReLU -> linear 128 -> ReLU -> linear ``out_dim``
    on ``[N, C, 10, 10]`` frames (Young & Tian 2019); ``in_extra`` extra inputs (the context
    for the concat variant) join at the first linear layer."""

    def __init__(self, channels: int, out_dim: int, hidden: int = 128, in_extra: int = 0) -> None:
        super().__init__()
        self.channels, self.in_extra = channels, in_extra
        self.conv = nn.Conv2d(channels, 16, 3)
        self.fc = nn.Linear(16 * 8 * 8 + in_extra, hidden)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, C*100 + in_extra) flat frames (+ context)
        frames = x[:, : self.channels * 100].reshape(-1, self.channels, 10, 10)
        h = torch.relu(self.conv(frames)).flatten(1)  # (N, 1024)
        if self.in_extra:
            h = torch.cat([h, x[:, self.channels * 100:]], 1)
        out: Tensor = self.out(torch.relu(self.fc(h)))
        return out


def _orthogonal(net: nn.Module, last_gain: float) -> nn.Module:
    """SB3's initialisation: orthogonal weights (gain sqrt(2), the last layer ``last_gain``)
    and zero biases."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for index, layer in enumerate(layers):
        gain = last_gain if index == len(layers) - 1 else math.sqrt(2)
        nn.init.orthogonal_(layer.weight, gain=gain)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return net


class _Head(nn.Module):
    """One head (policy or value): a plain network, or a generated one."""

    def __init__(self, net: nn.Module, *, generated: bool, z_dim: int,
                 hyper_hidden: Sequence[int], image: bool) -> None:
        super().__init__()
        self.generated = generated
        if not generated:
            self.net = net
            return
        if image:  # FiLM on every layer: a per-game scale and shift of each channel and unit
            self.target = FunctionalTarget(net, generate=[nn.Conv2d, nn.Linear], adapter="film")
        else:      # the whole network, per sample
            self.target = FunctionalTarget(net)
        self.hyper = DeltaHyperNet(self.target.spec, z_dim, hidden=tuple(hyper_hidden),
                                   base=self.target.initial_params())

    def forward(self, obs: Tensor, z: Tensor | None) -> Tensor:
        if not self.generated:
            return self.net(obs)  # type: ignore[no-any-return]
        assert z is not None
        params = self.hyper(z)  # {name: [B, *shape]}: one network per sample
        out: Tensor = self.target(params, obs[:, None])[:, 0]  # (B, 1, out) -> (B, out)
        return out

    def materialize(self, z: Tensor) -> nn.Module:
        """The plain network of one context's embedding ``z`` ``[1, Z]``."""
        if not self.generated:
            return self.net
        params = self.hyper(z)
        return self.target.materialize({k: v[0] for k, v in params.items()})


class PolicyNet(nn.Module):
    """Actor and critic over ``[B, obs_dim + context_dim]`` flat observations.

    Arguments:
        variant: ``"hypernet"``, ``"concat"`` or ``"blind"`` (see the module docstring).
        obs_dim: length of the flat observation (``C * 100`` for game frames).
        context_dim: length of the normalised context at the end of each observation.
        action_dim: logits (discrete) or the mean's width (continuous).
        hidden: hidden widths of the MLP heads (vector observations).
        activation: their activation (``tanh``: SB3's default for PPO).
        z_dim: width of the context embedding (hypernet).
        hyper_hidden: hidden widths of each generator's delta trunk.
        channels: frames of ``channels x 10 x 10`` (MinAtar, Atari): ``GameCNN`` heads.

    ``mlp_extractor``-compatible: ``forward`` returns ``(action output, value)`` and
    ``latent_dim_pi``/``latent_dim_vf`` are their widths, so SB3's action and value nets can
    be identities and the whole policy is this module's.
    """

    def __init__(self, variant: Variant, obs_dim: int, context_dim: int, action_dim: int, *,
                 hidden: Sequence[int] = (64, 64), activation: str = "tanh", z_dim: int = 32,
                 hyper_hidden: Sequence[int] = (64,), channels: int | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
        if context_dim < 1 and variant != "blind":
            raise ValueError(f"the {variant} variant needs a context (context_dim >= 1)")
        self.variant, self.obs_dim, self.context_dim = variant, obs_dim, context_dim
        self.latent_dim_pi, self.latent_dim_vf = action_dim, 1
        self.channels = channels
        extra = context_dim if variant == "concat" else 0
        generated = variant == "hypernet"

        def network(out_dim: int, gain: float) -> nn.Module:
            if channels is not None:
                return _orthogonal(GameCNN(channels, out_dim, in_extra=extra), gain)
            return _orthogonal(MLP(obs_dim + extra, out_dim, hidden, activation), gain)

        self.encoder = FeatureEncoder(context_dim, z_dim) if generated else None
        kwargs = {"generated": generated, "z_dim": z_dim, "hyper_hidden": hyper_hidden,
                  "image": channels is not None}
        self.pi = _Head(network(action_dim, 0.01), **kwargs)  # type: ignore[arg-type]
        self.vf = _Head(network(1, 1.0), **kwargs)  # type: ignore[arg-type]

    def _split(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        if features.dim() != 2 or features.shape[1] != self.obs_dim + self.context_dim:
            raise ValueError(f"observations must have shape [B, {self.obs_dim} + "
                             f"{self.context_dim}] (observation, then context); got "
                             f"{list(features.shape)}")
        obs = features[:, : self.obs_dim]
        if self.variant == "concat":
            obs = features
        z = None if self.encoder is None else self.embed(features[:, self.obs_dim:])
        return obs, z

    def embed(self, context: Tensor) -> Tensor:
        """The encoder's embedding ``[B, Z]`` of normalised contexts ``[B, context_dim]``."""
        assert self.encoder is not None, "only the hypernet variant embeds contexts"
        empty = context.new_zeros(context.shape[0], 0, 0)  # no support set: the context is all
        return self.encoder(Episode(empty, empty, empty, descriptor=context))  # type: ignore[no-any-return]

    def forward_actor(self, features: Tensor) -> Tensor:
        obs, z = self._split(features)
        return self.pi(obs, z)  # type: ignore[no-any-return]

    def forward_critic(self, features: Tensor) -> Tensor:
        obs, z = self._split(features)
        return self.vf(obs, z)  # type: ignore[no-any-return]

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        obs, z = self._split(features)
        return self.pi(obs, z), self.vf(obs, z)

    @torch.no_grad()
    def policy_for(self, context: Tensor) -> nn.Module:
        """One context's standalone policy: a plain ``nn.Module`` from the flat observation
        ``[N, obs_dim]`` (no context) to the action output ``[N, action_dim]``.

        ``context`` is the *normalised* context ``[context_dim]`` (``ContextSpace.normalise``,
        or a one-hot game id). hypernet: the generated network; concat: the shared network
        with the context fixed inside; blind: the shared network.
        """
        context = context.reshape(1, -1).to(torch.float32)
        if context.shape[1] != self.context_dim:
            raise ValueError(f"context must have {self.context_dim} values; got "
                             f"{context.shape[1]}")
        if self.variant == "concat":
            return _WithContext(_copy(self.pi.net), context[0])
        if self.variant == "blind":
            return _copy(self.pi.net)
        return self.pi.materialize(self.embed(context)).eval()


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).eval()


class _WithContext(nn.Module):
    """A concat-variant policy with its context fixed: ``x [N, obs_dim] -> net([x, c])``."""

    context: Tensor

    def __init__(self, net: nn.Module, context: Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("context", context.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.cat([x, self.context.expand(x.shape[0], -1)], 1))  # type: ignore[no-any-return]
