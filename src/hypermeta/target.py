"""``FunctionalTarget``: any ``nn.Module`` as a pure, task-batched function of generated params."""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hypermeta.gates import INITIAL_LOGIT, gate_hook, masks_for
from hypermeta.spec import Params, ParamSpec, initial_width

log = logging.getLogger(__name__)

Adapter = Literal["full", "lowrank", "film"]
BatchNormMode = Literal["batch", "frozen"]
Selection = str | type[nn.Module] | Sequence[str | type[nn.Module]]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_ADAPTABLE = (nn.Linear, nn.Conv2d)
# Messages torch raises when an op has no vmap batching rule (only these trigger the loop).
_VMAP_UNSUPPORTED = ("batching rule", "vmap: ", "not supported with vmap", "vmap over")


class FunctionalTarget(nn.Module):
    """Wrap an existing ``nn.Module`` so T task-specific copies run in one vmapped call.

    The user's module is deep-copied and never changed. The selected parameters are removed from
    the copy and must be supplied per task (``spec`` says which); all other parameters stay
    ordinary shared trainable parameters of this object.

    Arguments:
        module: the target network, e.g. ``nn.Sequential(nn.Linear(1, 40), nn.ReLU(), ...)``.
        generate: which parameters the hypernetwork produces: ``"all"``, glob patterns over
            parameter names (``"head.*"``), module types (``nn.Linear``), or a list mixing both.
        adapter: ``"full"`` generates the selected tensors themselves; ``"lowrank"`` keeps the
            selected ``nn.Linear``/``nn.Conv2d`` weights shared and generates a rank-``rank``
            delta ``B @ A`` applied as two thin products (never a T x out x in tensor);
            ``"film"`` generates per-channel ``(scale, shift)`` applied as ``y * (1 + s) + t``.
        rank: rank of the low-rank delta.
        batchnorm: ``"batch"``: normalise with each task's own batch statistics, in training and
            evaluation alike (the MAML convention); running statistics are dropped.
            ``"frozen"``: always use the running statistics the module carries (for instance
            from pre-training) and never update them.
        input_shape: the shape of one example, checked at the entry when given.
        gates: also generate per-task structure gates over the module's gate sites (built-in
            ``MLP`` hidden units, ``Conv4`` channels; see ``hypermeta.gates``): spec entries
            ``"<site>.gate"`` of kind ``"gate"`` hold their logits, and ``materialize``
            returns a genuinely smaller network without the closed units.
        gate_mode: ``"units"``: one free gate logit per unit; ``"width"``: one generated open
            fraction per site, the open units always a prefix (see ``hypermeta.gates``).
        class_head: name of the final ``nn.Linear`` whose rows are generated one per class
            (``hypermeta.ClassHead``), so its number of outputs — the way count — is free: its
            params are ``[T, N, D]`` / ``[T, N]`` for any N, and it is never in ``spec``.
            ``generate="none"`` then leaves every other parameter shared.

    Example:
        >>> net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 1))
        >>> target = FunctionalTarget(net, generate="2.*")      # only the head is per task
        >>> params = {n: torch.zeros(8, *s) for n, s in zip(target.spec.names, target.spec.shapes)}
        >>> target(params, torch.randn(8, 10, 1)).shape
        torch.Size([8, 10, 1])
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        generate: Selection = "all",
        adapter: Adapter = "full",
        rank: int = 4,
        batchnorm: BatchNormMode = "batch",
        input_shape: Sequence[int] | None = None,
        gates: bool = False,
        gate_mode: Literal["units", "width"] = "units",
        class_head: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if adapter not in ("full", "lowrank", "film"):
            raise ValueError(f"adapter must be 'full', 'lowrank' or 'film', got {adapter!r}")
        if batchnorm not in ("batch", "frozen"):
            raise ValueError(f"batchnorm must be 'batch' or 'frozen', got {batchnorm!r}")
        if adapter == "lowrank" and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        self.adapter: Adapter = adapter
        self.rank = rank
        self.batchnorm: BatchNormMode = batchnorm
        if input_shape is None:  # built-in targets know the shape of one example
            input_shape = getattr(module, "input_shape", None)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        # built-in targets carry the JSON-able config that rebuilds them
        self.config: dict[str, object] | None = getattr(module, "config", None)
        self.module = copy.deepcopy(module)
        self.class_head, self.head_names = class_head, self._make_class_head(class_head)
        # the head's tensors are placeholders by now, so _select never returns them
        selected = _select(self.module, generate, allow_none=class_head is not None)
        if not selected and adapter != "full":
            raise ValueError(f"adapter={adapter!r} needs generate= to select layers")
        if adapter == "full":
            self.spec, self._initial = self._make_full(selected)
            self._adapted: dict[str, int] = {}
        else:
            self.spec, self._initial, self._adapted = self._make_adapters(selected)
        self._gate_hooks: dict[str, int] = {}
        self._closable: frozenset[str] = frozenset()
        if gate_mode not in ("units", "width"):
            raise ValueError(f"gate_mode must be 'units' or 'width', got {gate_mode!r}")
        if gates:
            self._add_gates(gate_mode)
        self._placeholders = frozenset(self.spec.names) | frozenset(self.head_names)
        self._shared_cache: dict[str, Tensor] | None = None
        self._setup_batchnorm()
        self._use_vmap = not any(isinstance(m, nn.RNNBase) for m in self.module.modules())
        if not self._use_vmap:
            self._warn_loop("nn.RNNBase modules (nn.GRU/nn.LSTM/nn.RNN) have no vmap rule")

    # ----------------------------------------------------------------- construction helpers
    def _make_class_head(self, name: str | None) -> tuple[str, ...]:
        self.feature_dim = 0
        if name is None:
            return ()
        try:
            head = self.module.get_submodule(name)
        except AttributeError:
            raise ValueError(f"class_head={name!r} names no submodule of "
                             f"{type(self.module).__name__}") from None
        if not isinstance(head, nn.Linear) or head.bias is None:
            raise ValueError(f"class_head={name!r} must be an nn.Linear with a bias; got "
                             f"{type(head).__name__}")
        self.feature_dim = head.in_features
        prefix = f"{name}." if name else ""
        for leaf in ("weight", "bias"):
            _make_placeholder(head, leaf)
        return (prefix + "weight", prefix + "bias")

    def _make_full(self, selected: list[str]) -> tuple[ParamSpec, Params]:
        names, shapes, kinds, fin, fout = [], [], [], [], []
        initial: Params = {}
        for name in selected:
            owner, leaf = _owner(self.module, name)
            tensor = getattr(owner, leaf)
            kind, fan_in, fan_out = _kind_and_fans(owner, leaf, tensor)
            names.append(name)
            shapes.append(tensor.shape)
            kinds.append(kind)
            fin.append(fan_in)
            fout.append(fan_out)
            initial[name] = tensor.detach().clone()
            _make_placeholder(owner, leaf)
        spec = ParamSpec(tuple(names), tuple(shapes), tuple(kinds), tuple(fin), tuple(fout))
        return spec, initial

    def _make_adapters(self, selected: list[str]) -> tuple[ParamSpec, Params, dict[str, int]]:
        layers = []
        for name in selected:
            owner_name, _, leaf = name.rpartition(".")
            owner = self.module.get_submodule(owner_name)
            if leaf == "weight" and isinstance(owner, _ADAPTABLE):
                layers.append(owner_name)
        if not layers:
            raise ValueError(
                f"generate= selected no nn.Linear or nn.Conv2d weight; adapter={self.adapter!r} "
                f"needs at least one (selected: {selected})"
            )
        names, shapes, kinds, fin, fout = [], [], [], [], []
        hook_ids: dict[str, int] = {}
        entries: list[tuple[str, tuple[int, ...], str, int, int]]  # leaf, shape, kind, fans
        for layer_name in layers:
            layer = self.module.get_submodule(layer_name)
            weight = _tensor(layer, "weight")
            out_ch, fan_in = int(weight.shape[0]), math.prod(weight.shape[1:])
            prefix = f"{layer_name}." if layer_name else ""
            if self.adapter == "lowrank":
                if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or
                                                     layer.padding_mode != "zeros"):
                    raise ValueError(f"adapter='lowrank' supports Conv2d with groups=1 and "
                                     f"padding_mode='zeros'; layer {layer_name!r} differs")
                entries = [("lora_a", (self.rank, fan_in), "lora_a", fan_in, self.rank),
                           ("lora_b", (out_ch, self.rank), "lora_b", self.rank, out_ch)]
                hook = _lowrank_hook
            else:
                entries = [("film_scale", (out_ch,), "film_scale", out_ch, out_ch),
                           ("film_shift", (out_ch,), "film_shift", out_ch, out_ch)]
                hook = _film_hook
            for leaf, shape, kind, a, b in entries:
                layer.register_buffer(leaf, torch.empty(0), persistent=False)
                names.append(prefix + leaf)
                shapes.append(torch.Size(shape))
                kinds.append(kind)
                fin.append(a)
                fout.append(b)
            hook_ids[layer_name] = layer.register_forward_hook(hook).id
        spec = ParamSpec(tuple(names), tuple(shapes), tuple(kinds), tuple(fin), tuple(fout))
        # Task-independent start: A random (He), B and FiLM zero, so the delta starts at zero.
        initial = spec.unflatten(spec.init_flat(torch.Generator().manual_seed(0)))
        return spec, initial, hook_ids

    def _add_gates(self, mode: str) -> None:
        sites = getattr(self.module, "gate_sites", None)
        if sites is None or not hasattr(self.module, "pruned"):
            raise ValueError(f"gates=True needs a target with gate_sites() and pruned(); "
                             f"{type(self.module).__name__} has none (built-in mlp and conv4 do)")
        spec = self.spec
        names, shapes, kinds = list(spec.names), list(spec.shapes), list(spec.kinds)
        fin, fout = list(spec.fan_in), list(spec.fan_out)
        kind = "gate" if mode == "units" else "gate_width"
        for site in sites():
            owner = self.module.get_submodule(site.module)
            owner.register_buffer("gate", torch.empty(0), persistent=False)
            # plain attributes the gate hook reads (channel dim, parametrisation, whether the
            # site may close entirely, sampling vs. binary)
            object.__setattr__(owner, "gate_dim", site.dim)
            object.__setattr__(owner, "gate_kind", kind)
            object.__setattr__(owner, "gate_closable", site.closable)
            object.__setattr__(owner, "gate_units", site.units)
            object.__setattr__(owner, "gate_training", self.training)
            self._gate_hooks[site.module] = owner.register_forward_hook(gate_hook).id
            name = f"{site.module}.gate"
            size = site.units if kind == "gate" else 1
            names.append(name)
            shapes.append(torch.Size([size]))
            kinds.append(kind)
            fin.append(site.units)  # for gate kinds: the number of units of the site
            fout.append(site.units)
            self._initial[name] = torch.full(
                (size,), INITIAL_LOGIT if kind == "gate" else initial_width(site.units))
        self._closable = frozenset(s.module for s in sites() if s.closable)
        self.spec = ParamSpec(tuple(names), tuple(shapes), tuple(kinds), tuple(fin), tuple(fout))

    def _setup_batchnorm(self) -> None:
        for m in self.module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and self.batchnorm == "batch":
                # Batch statistics per task, never stored: running buffers cannot be updated
                # under vmap, and the MAML convention normalises with the task's own batch.
                m.track_running_stats = False
                m.running_mean = None
                m.running_var = None
                m.num_batches_tracked = None
        self.train(self.training)

    def train(self, mode: bool = True) -> FunctionalTarget:
        super().train(mode)
        for site in getattr(self, "_gate_hooks", {}):  # gates follow the target, not BN modes
            object.__setattr__(self.module.get_submodule(site), "gate_training", mode)
        if self.batchnorm == "frozen":
            for m in self.module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()  # frozen statistics: never switch to batch statistics
        return self

    def _warn_loop(self, reason: str) -> None:
        warnings.warn(
            f"FunctionalTarget({type(self.module).__name__}): {reason}; running the T tasks "
            "in a per-task Python loop (slower). Built-in 'gru'/'lstm' targets are vmap-friendly.",
            RuntimeWarning,
            stacklevel=3,
        )

    # ----------------------------------------------------------------------------- API
    @property
    def has_gates(self) -> bool:
        """Whether this target generates structure gates (``gates=True``)."""
        return bool(self._gate_hooks)

    def initial_params(self) -> Params:
        """The task-independent starting value of every generated tensor (one task, no T dim).

        For ``adapter="full"`` the values the wrapped module held; for deltas, A ~ He and
        B, FiLM = 0 (so the task network starts equal to the shared one). Fresh copies.
        """
        return {k: v.clone() for k, v in self._initial.items()}

    def shared_tensors(self) -> dict[str, Tensor]:
        """Shared parameters and real buffers: everything ``functional_call`` needs but params.

        Cached (walking the module tree costs more than a small target's forward); ``_apply``
        (``.to()``, ``.double()``, ...) clears the cache because it may replace buffers.
        """
        if self._shared_cache is None:
            out: dict[str, Tensor] = dict(self.module.named_parameters())
            out.update((n, b) for n, b in self.module.named_buffers()
                       if n not in self._placeholders)
            self._shared_cache = out
        return dict(self._shared_cache)

    def _apply(self, fn: Any, recurse: bool = True) -> FunctionalTarget:
        self._shared_cache = None
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self._shared_cache = None
        return self

    def check(self, params: Params, x: Tensor) -> None:
        """Raise a clear error unless ``params`` match ``spec`` with the task dim of ``x``.

        Only shapes are read (no device sync), so this is cheap enough for every call.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape [T, N, ...], "
                            f"got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"x must have shape [T, N, ...] (task dim first); got {list(x.shape)}")
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict[str, Tensor], got {type(params).__name__}")
        missing = [n for n in (*self.spec.names, *self.head_names) if n not in params]
        extra = [n for n in params if n not in self._placeholders]
        if missing or extra:
            raise KeyError(f"params do not match the target spec: missing {missing}, "
                           f"unexpected {extra}")
        num_tasks = x.shape[0]
        for name, shape in zip(self.spec.names, self.spec.shapes):
            got = tuple(params[name].shape)
            if got != (num_tasks, *shape):
                raise ValueError(
                    f"params[{name!r}] has shape {list(got)}; expected [T, *{list(shape)}] with "
                    f"T = {num_tasks} from x (x has shape {list(x.shape)})"
                )
        if self.head_names:
            weight, bias = (tuple(params[n].shape) for n in self.head_names)
            if len(weight) != 3 or weight[0] != num_tasks or weight[2] != self.feature_dim \
                    or bias != weight[:2]:
                raise ValueError(f"class head params must be {self.head_names[0]} [T, N, "
                                 f"{self.feature_dim}] and {self.head_names[1]} [T, N] with T = "
                                 f"{num_tasks}; got {list(weight)} and {list(bias)}")
        if self.input_shape is not None and tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"x examples have shape {list(x.shape[2:])}; the target expects "
                             f"{list(self.input_shape)} (x: [T, N, *{list(self.input_shape)}])")

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Run T task networks at once: ``params`` ``{name: [T, *shape]}``, ``x`` ``[T, N, ...]``.

        Returns ``[T, N, ...]``, the output of each task's network on its own inputs.
        """
        self.check(params, x)
        if x.shape[0] == 1:  # one task (serving, adaptation latency): vmap would only add cost
            return self._call_one({n: p[0] for n, p in params.items()}, x[0])[None]
        if self._use_vmap:
            try:
                return vmap(self._call_one, randomness="different")(params, x)
            except RuntimeError as err:
                if not any(s in str(err) for s in _VMAP_UNSUPPORTED):
                    raise
                self._use_vmap = False
                self._warn_loop(f"vmap failed ({str(err).splitlines()[0][:160]})")
        outs = [self._call_one({n: p[i] for n, p in params.items()}, x[i])
                for i in range(x.shape[0])]
        return torch.stack(outs)

    def features(self, params: Params, x: Tensor) -> Tensor:
        """What the class head reads: ``[T, N, D]`` features of ``x`` under ``params`` (which
        need no head entries). The head runs as the identity map, so the features come out of
        the same code path as the predictions."""
        if not self.head_names:
            raise ValueError("features() needs a target built with class_head=")
        eye = torch.eye(self.feature_dim, dtype=x.dtype, device=x.device)
        head = {self.head_names[0]: eye.expand(x.shape[0], -1, -1),
                self.head_names[1]: x.new_zeros(x.shape[0], self.feature_dim)}
        out: Tensor = self(
            {**{n: p for n, p in params.items() if n not in self.head_names}, **head}, x)
        return out

    def _call_one(self, params: Params, x: Tensor) -> Tensor:
        # One task: params {name: [*shape]}, x [N, ...] -> [N, ...]
        tensors = self.shared_tensors()
        tensors.update(params)
        out: Tensor = functional_call(self.module, tensors, (x,), strict=True)
        return out

    @torch.no_grad()
    def materialize(self, params: Params) -> nn.Module:
        """ONE task's params (no T dim) -> a standalone copy of the target.

        The copy holds the generated weights as ordinary ``nn.Parameter`` s (deltas merged into
        the weights, so it is the user's plain architecture), detached from the hypernetwork.
        """
        for name, shape in zip(self.spec.names, self.spec.shapes):
            if name not in params:
                raise KeyError(f"params lack {name!r}")
            if tuple(params[name].shape) != tuple(shape):
                raise ValueError(f"params[{name!r}] has shape {list(params[name].shape)}; "
                                 f"materialize takes ONE task's params, shape {list(shape)}")
        module = copy.deepcopy(self.module)
        if self.class_head is not None:  # a plain nn.Linear with one row per class
            missing = [n for n in self.head_names if n not in params]
            if missing:
                raise KeyError(f"params lack the class head {missing}")
            weight, bias = (params[n] for n in self.head_names)
            if weight.dim() != 2 or tuple(bias.shape) != tuple(weight.shape[:1]):
                raise ValueError(f"materialize takes ONE task's class head, [N, D] and [N]; "
                                 f"got {list(weight.shape)} and {list(bias.shape)}")
            head = nn.Linear(weight.shape[1], weight.shape[0]).to(weight)
            head.weight.copy_(weight)
            head.bias.copy_(bias)
            owner_name, _, leaf = self.class_head.rpartition(".")
            setattr(module.get_submodule(owner_name), leaf, head)
        for site, hook_id in self._gate_hooks.items():
            owner = module.get_submodule(site)
            del owner._forward_hooks[hook_id]
            delattr(owner, "gate")
        if self.adapter == "full":
            for name in self.spec.names:
                if name.endswith(".gate") and name[:-5] in self._gate_hooks:
                    continue
                owner, leaf = _owner(module, name)
                delattr(owner, leaf)
                owner.register_parameter(leaf, nn.Parameter(params[name].detach().clone()))
        else:
            for layer_name, hook_id in self._adapted.items():
                _merge_adapter(module.get_submodule(layer_name), layer_name, hook_id, params,
                               self.adapter)
        module.train(self.training)
        if self._gate_hooks:  # drop the closed units: a genuinely smaller network
            masks = masks_for(params, self.spec, closable=self._closable)
            pruned: nn.Module = module.pruned(masks)  # type: ignore[operator]
            return pruned
        return module


# --------------------------------------------------------------------------- module helpers
def _select(module: nn.Module, generate: Selection, allow_none: bool = False) -> list[str]:
    """Names of the parameters chosen by ``generate`` (in ``named_parameters`` order)."""
    if generate == "none":
        if not allow_none:
            raise ValueError("generate='none' leaves nothing to generate; it needs class_head=")
        return []
    single = isinstance(generate, (str, type))
    items: list[str | type[nn.Module]] = [generate] if single else list(generate)  # type: ignore
    if not items:
        raise ValueError("generate= is empty; pass 'all', glob patterns or module types")
    patterns = ["*" if i == "all" else i for i in items if isinstance(i, str)]
    types = tuple(i for i in items if isinstance(i, type))
    bad = [i for i in items if not isinstance(i, (str, type))]
    if bad or any(not issubclass(t, nn.Module) for t in types):
        raise TypeError(f"generate= takes glob strings or nn.Module types; got {bad or types}")
    chosen = []
    for mod_name, mod in module.named_modules():
        for leaf, _ in mod.named_parameters(recurse=False):
            name = f"{mod_name}.{leaf}" if mod_name else leaf
            if any(fnmatch.fnmatchcase(name, p) for p in patterns) or (
                types and isinstance(mod, types)
            ):
                chosen.append(name)
    if not chosen:
        available = [n for n, _ in module.named_parameters()]
        raise ValueError(f"generate={generate!r} selects no parameter; the module has "
                         f"{available[:20]}{' ...' if len(available) > 20 else ''}")
    return chosen


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    owner_name, _, leaf = name.rpartition(".")
    return module.get_submodule(owner_name), leaf


def _make_placeholder(owner: nn.Module, leaf: str) -> None:
    # The generated tensor is no longer a parameter of the copy: a non-persistent empty buffer
    # keeps the name so functional_call(strict=True) demands it on every call.
    delattr(owner, leaf)
    owner.register_buffer(leaf, torch.empty(0), persistent=False)


def _kind_and_fans(owner: nn.Module, leaf: str, tensor: Tensor) -> tuple[str, int, int]:
    if isinstance(owner, _NORMS):
        kind = "norm_weight" if leaf == "weight" else "norm_bias"
        return kind, tensor.numel(), tensor.numel()
    if tensor.dim() >= 2:
        receptive = math.prod(tensor.shape[2:])
        return "weight", tensor.shape[1] * receptive, tensor.shape[0] * receptive
    weight = getattr(owner, "weight", None)
    if "bias" in leaf:
        if isinstance(weight, Tensor) and weight.dim() >= 2:
            receptive = math.prod(weight.shape[2:])
            return "bias", weight.shape[1] * receptive, weight.shape[0] * receptive
        return "bias", tensor.numel(), tensor.numel()
    return "other", tensor.numel(), tensor.numel()


def _tensor(module: nn.Module, name: str) -> Tensor:
    value = getattr(module, name)
    assert isinstance(value, Tensor), f"{name} of {type(module).__name__} is not a tensor"
    return value


def _lowrank_hook(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    # y = W0 x + B (A x): two thin products, never the [out, in] matrix B @ A per task.
    x = inputs[0]
    a, b = _tensor(layer, "lora_a"), _tensor(layer, "lora_b")  # [r, fan_in], [out, r]
    if isinstance(layer, nn.Conv2d):
        r = a.shape[0]
        kernel = a.reshape(r, *layer.weight.shape[1:])
        h = F.conv2d(x, kernel, None, layer.stride, layer.padding, layer.dilation)
        return output + F.conv2d(h, b[:, :, None, None])
    return output + F.linear(F.linear(x, a), b)


def _film_hook(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    scale, shift = _tensor(layer, "film_scale"), _tensor(layer, "film_shift")  # [out] each
    if isinstance(layer, nn.Conv2d):
        scale, shift = scale[:, None, None], shift[:, None, None]
    return output * (1 + scale) + shift


def _merge_adapter(layer: nn.Module, layer_name: str, hook_id: int, params: Params,
                   adapter: Adapter) -> None:
    prefix = f"{layer_name}." if layer_name else ""
    del layer._forward_hooks[hook_id]
    weight, bias = _tensor(layer, "weight"), getattr(layer, "bias", None)
    if adapter == "lowrank":
        a, b = params[prefix + "lora_a"], params[prefix + "lora_b"]
        weight.add_((b @ a).reshape(weight.shape))
        names = ("lora_a", "lora_b")
    else:
        scale, shift = 1 + params[prefix + "film_scale"], params[prefix + "film_shift"]
        weight.mul_(scale.reshape(-1, *([1] * (weight.dim() - 1))))
        new_bias = shift.clone() if bias is None else bias * scale + shift
        if bias is None:
            layer.register_parameter("bias", nn.Parameter(new_bias))
        else:
            bias.copy_(new_bias)
        names = ("film_scale", "film_shift")
    for leaf in names:
        delattr(layer, leaf)
