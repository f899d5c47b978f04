"""``FunctionalTarget``: any ``nn.Module`` as a pure, task-batched function of generated params."""

from __future__ import annotations

import copy
import fnmatch
import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hypermeta.adapters import FiLM, LowRank
from hypermeta.gates import GateEstimator, GateMode, Gates
from hypermeta.heads import PerClassHead
from hypermeta.parts import Part, register_placeholder
from hypermeta.plan import LinearPlan
from hypermeta.spec import Params, ParamSpec

log = logging.getLogger(__name__)

Adapter = Literal["full", "lowrank", "film"]
BatchNormMode = Literal["batch", "frozen"]
Batching = Literal["auto", "vmap", "loop"]
# "auto" loops (channels-last) over tasks of a conv target on the CPU from this many examples a
# task; fewer (an RL policy generated per sample: one example a task) stay vmapped
LOOP_MIN_EXAMPLES = 8

Selection = str | type[nn.Module] | Sequence[str | type[nn.Module]]
_P = TypeVar("_P", bound=Part)


def _fast(x: Tensor, channels_last: bool) -> Tensor:
    """One task's images ``[N, C, H, W]`` in channels-last format (mkldnn's fast layout)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


class FunctionalTarget(nn.Module):
    """Wrap an existing ``nn.Module`` so T task-specific copies run in one vmapped call.

    The user's module is deep-copied and never changed. The selected parameters are removed from
    the copy and must be supplied per task (``spec`` says which); all other parameters stay
    ordinary shared trainable parameters of this object. Whatever else is generated is a *part*
    (``hypermeta.parts``): an adapter, gates, a per-class head, or the user's own.

    Arguments:
        module: the target network, e.g. ``nn.Sequential(nn.Linear(1, 40), nn.ReLU(), ...)``.
        generate: which parameters the hypernetwork produces: ``"all"``, glob patterns over
            parameter names (``"head.*"``), module types (``nn.Linear``), a list mixing both, or
            ``"none"`` (only the parts generate).
        adapter: ``"full"`` generates the selected tensors themselves; ``"lowrank"`` (a
            rank-``rank`` delta ``B @ A``, never a T x out x in tensor) and ``"film"``
            (per-channel scale and shift) keep the selected ``nn.Linear``/``nn.Conv2d`` weights
            shared and generate deltas (``hypermeta.adapters``).
        rank: rank of the low-rank delta.
        batchnorm: ``"batch"``: normalise with each task's own batch statistics, in training and
            evaluation alike (the MAML convention); running statistics are dropped.
            ``"frozen"``: always use the running statistics the module carries (for instance
            from pre-training) and never update them.
        input_shape: the shape of one example, checked at the entry when given.
        gates, gate_mode, gate_sparsity: also generate per-task structure gates over the
            module's gate sites (``hypermeta.gates``): ``"units"`` (a logit per unit) or
            ``"width"`` (an open fraction per site); ``gate_estimator``: the gates in training
            (``hypermeta.gates.GateEstimator``); ``extra_loss`` returns ``gate_sparsity``
            times their expected open fraction; ``materialize`` prunes the closed units.
        class_head: name of the final ``nn.Linear`` whose rows are generated one per class
            (``hypermeta.heads``), so the way count is free: its params are ``[T, N, D]`` and
            ``[T, N]`` for any N, and never in ``spec``.
        parts: the user's own ``Part`` s, installed after the adapter and before the gates
            (which merge last: they prune).
        batching: how T tasks run: ``"vmap"`` (one vmapped call), ``"loop"`` (one call per
            task), or ``"auto"``: vmap, except targets with ``nn.Conv2d`` on the CPU given at
            least 8 images a task, which loop with the images in channels-last memory format
            (faster there, see ``benchmarks/conv4_step.py``).

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
        gate_mode: GateMode = "units",
        gate_sparsity: float = 0.0,
        gate_estimator: GateEstimator = "hard_concrete",
        class_head: str | None = None,
        parts: Sequence[Part] = (),
        batching: Batching = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if adapter not in ("full", "lowrank", "film"):
            raise ValueError(f"adapter must be 'full', 'lowrank' or 'film', got {adapter!r}")
        if batchnorm not in ("batch", "frozen"):
            raise ValueError(f"batchnorm must be 'batch' or 'frozen', got {batchnorm!r}")
        if isinstance(parts, Part) or not all(isinstance(p, Part) for p in parts):
            raise TypeError(f"parts= takes a sequence of hypermeta.parts.Part; got {parts!r}")
        # checks the gate arguments even without gates
        gate_part = Gates(gate_mode, sparsity=gate_sparsity, estimator=gate_estimator)
        if gate_sparsity and not gates:
            raise ValueError(f"gate_sparsity={gate_sparsity} needs gates=True")
        self.adapter, self.rank, self.batchnorm = adapter, rank, batchnorm
        if input_shape is None:  # built-in targets know the shape of one example
            input_shape = getattr(module, "input_shape", None)
        first = next(iter(module.children()), None) if isinstance(module, nn.Sequential) else None
        if input_shape is None and isinstance(first, nn.Linear):  # a plain MLP: its input width
            input_shape = (first.in_features,)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        # built-in targets carry the JSON-able config that rebuilds them
        self.config: dict[str, object] | None = getattr(module, "config", None)
        self.module = copy.deepcopy(module)
        self._setup_batchnorm()
        # A structural copy on the meta device (no memory) before anything is installed:
        # materialize fills a fresh copy of it, so it never has to remove a hook.
        self._blank: Callable[[], nn.Module] = functools.partial(
            copy.deepcopy, copy.deepcopy(self.module).to("meta"))

        head = None if class_head is None else PerClassHead(class_head)
        chosen: list[Part] = [] if head is None else [head]
        # the head's tensors are the head's: never selected as plain generated tensors
        exclude = frozenset(() if head is None else head.free_names)
        selected = _select(self.module, generate, exclude,
                           allow_none=bool(chosen or gates or parts))
        if not selected and adapter != "full":
            raise ValueError(f"adapter={adapter!r} needs generate= to select layers")
        if adapter == "lowrank":
            chosen.append(LowRank(selected, rank))
        elif adapter == "film":
            chosen.append(FiLM(selected))
        chosen += parts
        if gates:
            chosen.append(gate_part)
        self.parts = nn.ModuleList(chosen)

        full, self._initial = _plain_rows(self.module, selected if adapter == "full" else [])
        self._full_names, self._full_numel = full.names, full.numel()
        specs = [full]
        for part in chosen:
            rows = part.install(self.module)
            specs.append(rows)
            self._initial.update(part.initial_params(rows))
        self.spec = ParamSpec.concat(specs)
        self._free_names = tuple(n for part in chosen for n in part.free_names)
        self._placeholders = frozenset(self.spec.names) | frozenset(self._free_names)
        self.class_head = class_head
        self.head_names = () if head is None else head.free_names
        self.feature_dim = 0 if head is None else head.feature_dim
        self._shared_cache: dict[str, Tensor] | None = None
        # a plain Linear stack with plain generated tensors runs as F.linear/baddbmm calls
        self._plan = None if chosen else LinearPlan.of(self.module, frozenset(self.spec.names))
        if batching not in ("auto", "vmap", "loop"):
            raise ValueError(f"batching must be 'auto', 'vmap' or 'loop', got {batching!r}")
        self.batching = batching
        # convolutions on the CPU: one task at a time in channels-last memory format (a conv-4
        # step of 4 tasks: 1.5-1.8x slower vmapped than looped, benchmarks/conv4_step.py)
        self._convolutional = any(isinstance(m, nn.Conv2d) for m in self.module.modules())
        self._use_vmap = not any(isinstance(m, nn.RNNBase) for m in self.module.modules())
        if not self._use_vmap:
            self._warn_loop("nn.RNNBase modules (nn.GRU/nn.LSTM/nn.RNN) have no vmap rule")

    # ----------------------------------------------------------------- construction helpers
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
        super().train(mode)  # parts follow too (gates sample in training, are binary in eval)
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

    def _parts(self) -> list[Part]:
        return [p for p in self.parts if isinstance(p, Part)]  # typed view of the ModuleList

    def _part(self, kind: type[_P]) -> _P | None:
        return next((p for p in self.parts if isinstance(p, kind)), None)

    # ----------------------------------------------------------------------------- API
    def hold_gates_open(self, held: bool) -> None:
        """Open every structure gate and drop their sparsity cost (a warm-up), or stop."""
        gates = self._part(Gates)
        if gates is not None:
            gates.held_open = held

    @property
    def has_gates(self) -> bool:
        """Whether this target generates structure gates (``gates=True``)."""
        return self._part(Gates) is not None

    def initial_params(self) -> Params:
        """The task-independent starting value of every generated tensor (one task, no T dim).

        For ``adapter="full"`` the values the wrapped module held; for a part's rows what the
        part says (deltas: A ~ He, B and FiLM = 0, so the task network starts equal to the
        shared one; gates: all open). Fresh copies.
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

    def network_numel(self) -> int:
        """Parameters of ONE complete plain target network: shared plus generated tensors
        (not gates, adapter deltas or a user part's rows; nor a per-class head, whose size
        is the way count's)."""
        return sum(p.numel() for p in self.module.parameters()) + self._full_numel

    def extra_loss(self, params: Params) -> Tensor | None:
        """Sum of the parts' extra losses from the batched ``params`` (e.g. the gates'
        ``gate_sparsity * structure_cost``); ``None`` when no part adds one."""
        losses = [loss for part in self._parts() if (loss := part.extra_loss(params)) is not None]
        return sum(losses[1:], losses[0]) if losses else None

    def structure_cost(self, params: Params) -> Tensor:
        """Expected fraction of open gated units over the batch (0 without gates)."""
        gates = self._part(Gates)
        return torch.zeros(()) if gates is None else gates.structure_cost(params)

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
        missing = [n for n in (*self.spec.names, *self._free_names) if n not in params]
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
        for part in self._parts():
            part.check(params, num_tasks)
        if self.input_shape is not None and tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"x examples have shape {list(x.shape[2:])}; the target expects "
                             f"{list(self.input_shape)} (x: [T, N, *{list(self.input_shape)}])")

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Run T task networks at once: ``params`` ``{name: [T, *shape]}``, ``x`` ``[T, N, ...]``.

        Returns ``[T, N, ...]``, the output of each task's network on its own inputs.
        """
        self.check(params, x)
        return self.run(params, x)

    def run(self, params: Params, x: Tensor) -> Tensor:
        """``forward`` without the checks, for callers that validated ``params`` and ``x``
        once (the fast inference path, ``HyperModel.fast``)."""
        if self._plan is not None and x.dim() == 3 and x.shape[-1] == self._plan.in_features:
            if self._shared_cache is None:
                self.shared_tensors()
            assert self._shared_cache is not None
            return self._plan(self._shared_cache, params, x)
        # convolutions on the CPU over whole example sets: channels-last, one task at a time
        auto_conv = (self.batching == "auto" and self._convolutional and x.device.type == "cpu"
                     and x.dim() == 5 and x.shape[1] >= LOOP_MIN_EXAMPLES)
        if x.shape[0] == 1:  # one task (serving, adaptation latency): vmap would only add cost
            one = {n: p[0] for n, p in params.items()}
            return self._call_one(one, _fast(x[0], auto_conv))[None]
        if self.batching == "loop" or auto_conv or not self._use_vmap:
            return self._loop(params, x, channels_last=auto_conv)
        try:
            return vmap(self._call_one, randomness="different")(params, x)
        except RuntimeError as err:  # no batching rule, or an error of the module itself:
            out = self._loop(params, x)  # the loop tells them apart (it raises the latter)
            self._use_vmap = False
            self._warn_loop(f"vmap failed ({str(err).splitlines()[0][:160]})")
            return out

    def _loop(self, params: Params, x: Tensor, *, channels_last: bool = False) -> Tensor:
        outs = [self._call_one({n: p[i] for n, p in params.items()}, _fast(x[i], channels_last))
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

        The copy is the user's plain architecture (no placeholders, no hooks) holding the
        shared and generated tensors as ordinary ``nn.Parameter`` s, detached from the
        hypernetwork; every part then merges into it (deltas into the weights, the class head
        as a plain ``nn.Linear``, gates by pruning the closed units).
        """
        for name, shape in zip(self.spec.names, self.spec.shapes):
            if name not in params:
                raise KeyError(f"params lack {name!r}")
            if tuple(params[name].shape) != tuple(shape):
                raise ValueError(f"params[{name!r}] has shape {list(params[name].shape)}; "
                                 f"materialize takes ONE task's params, shape {list(shape)}")
        module = self._blank()
        _fill(module, {**self.shared_tensors(), **{n: params[n] for n in self._full_names}})
        for part in self._parts():
            module = part.merge(module, params)
        empty = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if empty:
            raise RuntimeError(f"materialize left {empty} without values (a part's merge "
                               "must replace what it generates)")
        return module.train(self.training)


# --------------------------------------------------------------------------- module helpers
def _select(module: nn.Module, generate: Selection, exclude: frozenset[str],
            allow_none: bool = False) -> list[str]:
    """Names of the parameters chosen by ``generate`` (in ``named_parameters`` order), but
    not those in ``exclude``."""
    if generate == "none":
        if not allow_none:
            raise ValueError("generate='none' leaves nothing to generate; it needs class_head= "
                             "(or gates=, parts=)")
        return []
    single = isinstance(generate, (str, type))
    if not single and not isinstance(generate, (list, tuple)):
        raise TypeError(f"generate= takes 'all', 'none', a glob string over parameter names, an "
                        f"nn.Module type, or a list of those; got {generate!r}")
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
            if name not in exclude and (any(fnmatch.fnmatchcase(name, p) for p in patterns)
                                        or (types and isinstance(mod, types))):
                chosen.append(name)
    if not chosen:
        available = [n for n, _ in module.named_parameters()]
        raise ValueError(f"generate={generate!r} selects no parameter; the module has "
                         f"{available[:20]}{' ...' if len(available) > 20 else ''}")
    return chosen


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    owner_name, _, leaf = name.rpartition(".")
    return module.get_submodule(owner_name), leaf


def _plain_rows(module: nn.Module, selected: list[str]) -> tuple[ParamSpec, Params]:
    """``adapter="full"``: the selected tensors themselves become placeholders, their rows
    starting from the module's values."""
    rows: list[tuple[str, torch.Size, str, int, int]] = []
    initial: Params = {}
    for name in selected:
        owner, leaf = _owner(module, name)
        tensor = getattr(owner, leaf)
        rows.append((name, tensor.shape, *_kind_and_fans(owner, leaf, tensor)))
        initial[name] = tensor.detach().clone()
        register_placeholder(owner, leaf)
    columns = list(zip(*rows)) or [()] * 5
    names, shapes, kinds, fan_in, fan_out = (tuple(column) for column in columns)
    return ParamSpec(names, shapes, kinds, fan_in, fan_out), initial


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




def _fill(module: nn.Module, values: dict[str, Tensor]) -> None:
    """Give the (meta) ``module`` real tensors: detached copies of ``values`` by name, as
    parameters (keeping ``requires_grad``) or buffers; tied tensors stay tied."""
    made: dict[int, Tensor] = {}
    for name, param in list(module.named_parameters(remove_duplicate=False)):
        if id(param) not in made and name in values:
            value = values[name]  # a shared parameter's flag may have changed since the copy
            grad = value.requires_grad if isinstance(value, nn.Parameter) else param.requires_grad
            made[id(param)] = nn.Parameter(value.detach().clone(), grad)
        if id(param) in made:
            owner, leaf = _owner(module, name)
            setattr(owner, leaf, made[id(param)])
    for name, buffer in list(module.named_buffers(remove_duplicate=False)):
        if id(buffer) not in made and name in values:
            made[id(buffer)] = values[name].detach().clone()
        if id(buffer) in made:
            owner, leaf = _owner(module, name)
            setattr(owner, leaf, made[id(buffer)])
