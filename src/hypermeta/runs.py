"""The one place a ``RunConfig`` becomes objects (task source, target, learner), and the one
place a run folder is loaded back (``load_run``), its data provenance checked."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from hypermeta.checkpoint import CheckpointError, load_checkpoint
from hypermeta.config import ConfigError, RunConfig
from hypermeta.gates import GATE_KINDS
from hypermeta.heads import ClassHead, RidgeHead
from hypermeta.hypernets import MLPHyperNet, SplitHyperNet, split_spec
from hypermeta.model import HyperModel, Learner
from hypermeta.registry import ENCODERS, HYPERNETS, METHODS, TARGETS, BuildContext
from hypermeta.spec import ParamSpec
from hypermeta.target import FunctionalTarget
from hypermeta.tasks import TaskSource, get_tasks

log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=nn.Module)

MAX_PARAMETERS = int(os.environ.get("HYPERMETA_MAX_PARAMETERS", 2**31))
"""Largest learner (parameters and buffers) a config may build: 2^31 numbers = 8 GiB of
float32 by default. Checked on the meta device before anything is allocated."""


def build_tasks(config: RunConfig) -> TaskSource:
    """The run's task family (its registered name plus its arguments)."""
    try:
        return get_tasks(config.tasks.name, **config.tasks.kwargs())
    except (TypeError, ValueError) as err:
        raise ConfigError(f"tasks: {err}") from None


def build_network_for(config: RunConfig, target: nn.Module | None) -> nn.Module:
    """The target network: a registered one rebuilt from ``config.target``, or the user's."""
    if target is not None:
        return copy.deepcopy(target)
    if config.target.name == "custom":
        raise ConfigError("target: this run uses a custom target module; pass it as target=")
    try:
        net = TARGETS.get(config.target.name)(**config.target.kwargs())
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"target: {err}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"target: {config.target.name!r} built a {type(net).__name__}, not "
                          "an nn.Module")
    return net


def build_learner(config: RunConfig, tasks: TaskSource,
                  target: nn.Module | None = None) -> Learner:
    """The learner of ``config.method`` (registered in ``METHODS``).

    It is first built on the ``meta`` device (no memory) to count its numbers: a config asking
    for more than ``MAX_PARAMETERS`` (e.g. a 10^7-wide layer) is refused before allocating.
    """
    builder = METHODS.get(config.method)
    state = torch.get_rng_state()
    try:
        with torch.device("meta"):
            probe = builder(config, tasks, build_network_for(config, target))
        size = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    except ConfigError:
        raise
    except Exception as err:  # an op the meta device cannot run: no estimate, build anyway
        log.debug("no size estimate for %s: %s", config.method, err)
        size = 0
    finally:
        torch.set_rng_state(state)  # the real build draws the same initial weights
    if size > MAX_PARAMETERS:
        raise ConfigError(f"this config builds a {config.method} learner of {size:,} numbers "
                          f"({size * 4 / 2**30:,.1f} GiB as float32), over the limit of "
                          f"{MAX_PARAMETERS:,} (set HYPERMETA_MAX_PARAMETERS to raise it); "
                          "check the target and hypernet sizes")
    net = build_network_for(config, target)
    learner = builder(config, tasks, net)
    if not isinstance(learner, Learner):
        raise ConfigError(f"method: {config.method!r} built a {type(learner).__name__}, not a "
                          "hypermeta Learner")
    return learner


def build_hypermodel(config: RunConfig, tasks: TaskSource, net: nn.Module) -> HyperModel:
    """The ``hypernet`` method: target, encoder, generator (and class head) from the config."""
    head, ridge = config.class_head, config.ridge_head
    if head.enabled and not tasks.kind.uses_classes:
        raise ConfigError(f"class_head.enabled: needs class labels; {tasks.name!r} is "
                          f"{tasks.kind.name}")
    if ridge.enabled and tasks.kind.uses_classes:
        raise ConfigError(f"ridge_head.enabled: fits regression targets; {tasks.name!r} has "
                          "class labels (use class_head)")
    head_module = head.module if head.enabled else ridge.module if ridge.enabled else None
    try:
        functional = FunctionalTarget(net, generate=config.generate, adapter=config.adapter,
                                      rank=config.rank, batchnorm=config.batchnorm,
                                      gates=config.gates.enabled, gate_mode=config.gates.mode,
                                      gate_sparsity=config.gates.sparsity,
                                      gate_estimator=config.gates.estimator,
                                      class_head=head_module)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"generate/adapter/class_head: {err}") from None
    encoder, hypernet = None, None
    ctx = BuildContext(x_shape=tuple(tasks.x_shape), out_dim=tasks.out_dim, kind=tasks.kind,
                       x_dtype=tasks.x_dtype, vocab_size=getattr(tasks, "vocab_size", None),
                       spec=functional.spec, target=functional)
    if len(functional.spec):
        try:
            encoder = ENCODERS.get(config.encoder.kind)(ctx, **config.encoder.kwargs())
        except (TypeError, ValueError) as err:
            raise ConfigError(f"encoder: {err}") from None
        ctx = BuildContext(**{**ctx.__dict__, "z_dim": getattr(encoder, "out_dim", None)})
        try:
            hypernet = _build_hypernet(config, ctx, functional.spec)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"hypernet: {err}") from None
    if head.descriptions and not getattr(tasks, "describe_classes", False):
        raise ConfigError(f"class_head.descriptions: the {tasks.name!r} tasks carry no class "
                          "descriptions (for wordnet: tasks.describe: true)")
    class_head: ClassHead | RidgeHead | None = None
    if head.enabled:
        class_head = ClassHead(functional.feature_dim, head.hidden, descriptions=head.descriptions)
    elif ridge.enabled:
        class_head = RidgeHead(functional.feature_dim, ridge.l2)
    try:
        return HyperModel(encoder, hypernet, functional, kind=tasks.kind,
                          finetune_steps=config.finetune.steps, finetune_lr=config.finetune.lr,
                          class_head=class_head)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _build_hypernet(config: RunConfig, ctx: BuildContext, spec: ParamSpec) -> nn.Module:
    """The configured generator; with ``gates.separate_head`` the gates come from their own
    small MLP generator (``SplitHyperNet``)."""
    build = HYPERNETS.get(config.hypernet.kind)
    gates = config.gates
    if not (gates.enabled and gates.separate_head):
        return build(ctx, **config.hypernet.kwargs())  # type: ignore[no-any-return]
    rest, gate_rows = split_spec(spec, GATE_KINDS)
    if not len(rest):
        raise ValueError("gates.separate_head: nothing but gates is generated")
    main = build(BuildContext(**{**ctx.__dict__, "spec": rest}), **config.hypernet.kwargs())
    side = MLPHyperNet(gate_rows, int(ctx.z_dim or 0), hidden=list(gates.head_hidden))
    return SplitHyperNet(main, side, spec, detach=gates.detach)


# ---------------------------------------------------------------------------- loading runs
@dataclass
class Run:
    """A trained run loaded back: its learner (in eval mode), config, task source, the
    checkpoint's content id and the data provenance it recorded."""

    learner: Learner
    config: RunConfig
    tasks: TaskSource
    content_id: str
    provenance: dict[str, Any]

    @property
    def hypermodel(self) -> HyperModel:
        """The learner as a ``HyperModel`` (a ``ValueError`` for other methods' runs)."""
        if not isinstance(self.learner, HyperModel):
            raise ValueError(f"this is a {self.config.method} run; this needs a hypernet run")
        return self.learner


def _read(run_dir: str | Path, which: str) -> tuple[dict[str, Any], dict[str, Any], RunConfig]:
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    weights, _, meta = load_checkpoint(Path(run_dir) / f"{which}.safetensors")
    config = RunConfig.from_saved(meta["config"])
    return weights, meta, config


def cpu_layout(learner: _M) -> _M:
    """Put a convolutional learner's 4-D weights on the CPU in channels-last memory format,
    mkldnn's fast layout (1.3-1.5x a conv-4 step, ``benchmarks/conv4_step.py``); a layout
    only: values, ``state_dict`` keys and checkpoints (stored contiguous) are unchanged."""
    on_cpu = all(p.device.type == "cpu" for p in learner.parameters())
    if on_cpu and any(isinstance(m, nn.Conv2d) for m in learner.modules()):
        learner.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return learner


def load_run(run_dir: str | Path, *, which: str = "best", target: nn.Module | None = None,
             method: str | None = None, allow_data_change: bool = False) -> Run:
    """Rebuild a trained run from ``run_dir/{which}.safetensors`` (never unpickles).

    Arguments:
        run_dir: a folder written by ``fit`` / ``hypermeta train``.
        which: ``"best"`` (best validation) or ``"last"``.
        target: the user's own target module when the run used ``target: {name: custom}``.
        method: when given, the run must be of this method (checked before anything is built,
            so e.g. the server never imports the baselines).
        allow_data_change: load even when the task data (files, class lists) now differs
            from the data the run recorded; by default that is an error.

    Example:
        >>> run = load_run("runs/sin5")
        >>> evaluate(run.learner, run.tasks.fixed_tasks("test"), run.tasks.kind)
    """
    weights, meta, config = _read(run_dir, which)
    if method is not None and config.method != method:
        raise ValueError(f"{run_dir} holds a {config.method} run; this needs a {method} run")
    tasks = build_tasks(config)
    recorded = meta["state"].get("provenance", {}) if isinstance(meta["state"], dict) else {}
    current = tasks.provenance()
    if not recorded and current and not allow_data_change:
        raise ValueError(f"{run_dir} records no data provenance (written by hypermeta 0.1.0), "
                         f"so it cannot be checked against the {tasks.name!r} data found now; "
                         "pass allow_data_change=True (--allow-data-change) to load it anyway")
    if recorded != current and not allow_data_change:
        changed = sorted(k for k in {*recorded, *current} if recorded.get(k) != current.get(k))
        raise ValueError(f"{run_dir} was trained on other data than {tasks.name!r} reads now "
                         f"(differs: {changed}); point the family at the run's data (its "
                         "tasks.data_dir / root / path, or HYPERMETA_DATA), or pass "
                         "allow_data_change=True (--allow-data-change) to use it anyway")
    learner = build_learner(config, tasks, target)
    try:
        learner.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{run_dir}: weights do not fit the rebuilt model "
                              f"({str(err).splitlines()[0]})") from None
    cpu_layout(learner).eval()
    return Run(learner, config, tasks, str(meta["content_id"]), current)


def load_hypermodel(run_dir: str | Path, *, which: str = "best",
                    target: nn.Module | None = None, allow_data_change: bool = False) -> Run:
    """``load_run`` for a hypernetwork run (the CLI's generate/export and the server)."""
    run = load_run(run_dir, which=which, target=target, method="hypernet",
                   allow_data_change=allow_data_change)
    run.hypermodel  # noqa: B018  (raises unless the method built a HyperModel)
    return run


def load(run_dir: str | Path, *, which: str = "best", target: nn.Module | None = None,
         allow_data_change: bool = False) -> Learner:
    """The trained learner of a run folder (a ``HyperModel`` for hypernet runs), in eval mode
    (arguments as ``load_run``).

    Example:
        >>> model = hypermeta.load("runs/sin5")
        >>> nets = model.generate(episode)
    """
    return load_run(run_dir, which=which, target=target,
                    allow_data_change=allow_data_change).learner
