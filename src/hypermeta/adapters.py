"""Delta adapters: the target's selected weights stay shared, each task gets a small delta.

``adapter="full"`` of a target needs no part: the selected tensors themselves are generated.
The two parts here (``hypermeta.parts``) keep the selected ``nn.Linear``/``nn.Conv2d`` weights
shared and generate per layer:

* ``LowRank`` (``adapter="lowrank"``): LoRA factors ``A [r, fan_in]``, ``B [out, r]``, applied as
  ``W0 x + B (A x)`` — two thin products, never a ``T x out x in`` tensor (Hu et al., "LoRA",
  ICLR 2022). ``A`` starts He-normal and ``B`` at zero, so the delta starts at zero.
* ``FiLM`` (``adapter="film"``): per-channel ``(scale, shift)`` applied as ``y * (1 + s) + t``
  (Perez et al., "FiLM", AAAI 2018); both start at zero.

``materialize`` merges either into the plain weights (``W0 + B @ A``; scale and shift into
weight and bias), so the standalone network is the user's architecture.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hypermeta.parts import Part, register_placeholder
from hypermeta.spec import Init, Params, ParamSpec

_ADAPTABLE = (nn.Linear, nn.Conv2d)
# one row of an adapter layer: leaf name, shape, fan_in, fan_out, initialisation
_Row = tuple[str, tuple[int, ...], int, int, Init]


class _Adapter(Part):
    """What both adapters share: pick the layers, add placeholders and a hook per layer."""

    name: str
    leaves: tuple[str, ...]  # the generated tensors of each layer, as _rows names them

    def __init__(self, selected: Sequence[str]) -> None:
        super().__init__()
        self.selected = tuple(selected)  # parameter names chosen by generate=
        self.layers: tuple[str, ...] = ()
        self.handles: list[RemovableHandle] = []

    @abc.abstractmethod
    def _rows(self, layer_name: str, layer: nn.Linear | nn.Conv2d) -> list[_Row]:
        """The generated tensors of one layer, in ``leaves`` order."""

    def install(self, module: nn.Module) -> ParamSpec:
        layers = []
        for name in self.selected:
            owner_name, _, leaf = name.rpartition(".")
            if leaf == "weight" and isinstance(module.get_submodule(owner_name), _ADAPTABLE):
                layers.append(owner_name)
        if not layers:
            raise ValueError(
                f"generate= selected no nn.Linear or nn.Conv2d weight; adapter={self.name!r} "
                f"needs at least one (selected: {list(self.selected)})")
        self.layers = tuple(layers)
        names, shapes, kinds, fan_in, fan_out, inits = [], [], [], [], [], []
        for layer_name in layers:
            layer = module.get_submodule(layer_name)
            assert isinstance(layer, _ADAPTABLE)
            prefix = f"{layer_name}." if layer_name else ""
            for leaf, shape, a, b, init in self._rows(layer_name, layer):
                register_placeholder(layer, leaf)
                names.append(prefix + leaf)
                shapes.append(torch.Size(shape))
                kinds.append(leaf)
                fan_in.append(a)
                fan_out.append(b)
                inits.append(init)
            self.handles.append(layer.register_forward_hook(self._hook))
        return ParamSpec(tuple(names), tuple(shapes), tuple(kinds), tuple(fan_in),
                         tuple(fan_out), tuple(inits))

    @abc.abstractmethod
    def _hook(self, layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        """Forward hook: the layer's output with one task's delta (its placeholders) applied."""

    def merge(self, module: nn.Module, params: Params) -> nn.Module:
        for layer_name in self.layers:
            prefix = f"{layer_name}." if layer_name else ""
            layer = module.get_submodule(layer_name)
            assert isinstance(layer, _ADAPTABLE)
            self._merge_layer(layer, {leaf: params[prefix + leaf] for leaf in self.leaves})
        return module

    @abc.abstractmethod
    def _merge_layer(self, layer: nn.Linear | nn.Conv2d, values: Params) -> None:
        """Fold one task's ``values`` (by leaf name) into the layer's weight and bias."""


class LowRank(_Adapter):
    """Rank-``rank`` LoRA deltas of the selected Linear / Conv2d weights (``adapter="lowrank"``).

    Arguments:
        selected: the parameter names ``generate=`` chose; their Linear/Conv2d weights adapt.
        rank: the rank ``r`` of each delta ``B @ A``.
    """

    name, leaves = "lowrank", ("lora_a", "lora_b")

    def __init__(self, selected: Sequence[str], rank: int = 4) -> None:
        super().__init__(selected)
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        self.rank = rank

    def _rows(self, layer_name: str, layer: nn.Linear | nn.Conv2d) -> list[_Row]:
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            raise ValueError(f"adapter='lowrank' supports Conv2d with groups=1 and "
                             f"padding_mode='zeros'; layer {layer_name!r} differs")
        out_ch, fan_in = int(layer.weight.shape[0]), math.prod(layer.weight.shape[1:])
        return [("lora_a", (self.rank, fan_in), fan_in, self.rank, Init(std=1.0, he=True)),
                ("lora_b", (out_ch, self.rank), self.rank, out_ch, Init())]

    def _hook(self, layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        # y = W0 x + B (A x): two thin products, never the [out, in] matrix B @ A per task.
        x = inputs[0]
        a, b = layer.get_buffer("lora_a"), layer.get_buffer("lora_b")  # [r, fan_in], [out, r]
        if isinstance(layer, nn.Conv2d):
            kernel = a.reshape(a.shape[0], *layer.weight.shape[1:])
            h = F.conv2d(x, kernel, None, layer.stride, layer.padding, layer.dilation)
            return output + F.conv2d(h, b[:, :, None, None])
        return output + F.linear(F.linear(x, a), b)

    def _merge_layer(self, layer: nn.Linear | nn.Conv2d, values: Params) -> None:
        weight = layer.weight
        weight.add_((values["lora_b"] @ values["lora_a"]).reshape(weight.shape))


class FiLM(_Adapter):
    """Per-channel scale and shift of the selected Linear / Conv2d outputs (``adapter="film"``).

    Arguments:
        selected: the parameter names ``generate=`` chose; their Linear/Conv2d layers adapt.
    """

    name, leaves = "film", ("film_scale", "film_shift")

    def _rows(self, layer_name: str, layer: nn.Linear | nn.Conv2d) -> list[_Row]:
        out_ch = int(layer.weight.shape[0])
        return [("film_scale", (out_ch,), out_ch, out_ch, Init()),
                ("film_shift", (out_ch,), out_ch, out_ch, Init())]

    def _hook(self, layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        scale, shift = layer.get_buffer("film_scale"), layer.get_buffer("film_shift")  # [out]
        if isinstance(layer, nn.Conv2d):
            scale, shift = scale[:, None, None], shift[:, None, None]
        return output * (1 + scale) + shift

    def _merge_layer(self, layer: nn.Linear | nn.Conv2d, values: Params) -> None:
        scale, shift = 1 + values["film_scale"], values["film_shift"]
        weight, bias = layer.weight, layer.bias
        weight.mul_(scale.reshape(-1, *([1] * (weight.dim() - 1))))
        if bias is None:  # a bias-free layer gains one: the shift
            layer.register_parameter("bias", nn.Parameter(shift.clone()))
        else:
            bias.mul_(scale).add_(shift)
