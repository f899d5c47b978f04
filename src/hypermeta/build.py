"""The one place a ``RunConfig`` becomes objects: its task source and its learner."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from hypermeta.baselines import MAML, ProtoNet, Scratch
from hypermeta.checkpoint import CheckpointError, load_checkpoint
from hypermeta.config import ConfigError, RunConfig
from hypermeta.encoders import (
    FeatureEncoder,
    HashedLabelEncoder,
    SetEncoder,
    TaskEmbedding,
    TextEncoder,
)
from hypermeta.hypernets import ChunkedHyperNet, ClassHead, DeltaHyperNet, MLPHyperNet
from hypermeta.model import HyperModel
from hypermeta.networks import Conv4, build_network
from hypermeta.spec import ParamSpec
from hypermeta.target import FunctionalTarget
from hypermeta.tasks import TaskSource, get_tasks


def build_tasks(config: RunConfig) -> TaskSource:
    """The run's task family (registered name plus its arguments)."""
    kwargs = config.tasks.model_dump()
    name = kwargs.pop("name")
    try:
        return get_tasks(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"tasks: {err}") from None


def build_network_for(config: RunConfig, target: nn.Module | None) -> nn.Module:
    """The target network: a built-in rebuilt from ``config.target``, or the user's module."""
    if target is not None:
        return copy.deepcopy(target)
    if config.target.get("name") == "custom":
        raise ConfigError("target: this run uses a custom target module; pass it as target=")
    try:
        return build_network(config.target)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"target: {err}") from None


def build_learner(config: RunConfig, tasks: TaskSource,
                  target: nn.Module | None = None) -> nn.Module:
    """The learner of ``config.method`` (``HyperModel``, ``MAML``, ``ProtoNet``, ``Scratch``)."""
    net = build_network_for(config, target)
    kind = tasks.task_kind
    method = config.method
    if method == "protonet":
        if kind != "classification":
            raise ConfigError(f"method: protonet needs a classification task family; "
                              f"{tasks.name!r} is {kind}")
        body = getattr(net, "features", net)  # conv4: the feature extractor, no head
        return ProtoNet(nn.Sequential(body, nn.Flatten()))
    if method in ("maml", "fomaml"):
        functional = FunctionalTarget(net, batchnorm=config.batchnorm)
        return MAML(functional, kind, inner_lr=config.maml.inner_lr,
                    inner_steps=config.maml.inner_steps,
                    test_inner_steps=config.maml.test_inner_steps,
                    first_order=method == "fomaml")
    if method == "scratch":
        return Scratch(FunctionalTarget(net, batchnorm=config.batchnorm), kind,
                       steps=config.scratch.steps, lr=config.scratch.lr)
    head = config.class_head
    if head.enabled and kind != "classification":
        raise ConfigError(f"class_head.enabled: needs a classification task family; "
                          f"{tasks.name!r} is {kind}")
    try:
        functional = FunctionalTarget(net, generate=config.generate, adapter=config.adapter,
                                      rank=config.rank, batchnorm=config.batchnorm,
                                      gates=config.gates.enabled, gate_mode=config.gates.mode,
                                      class_head=head.module if head.enabled else None)
    except ValueError as err:
        raise ConfigError(f"generate/adapter/class_head: {err}") from None
    encoder, hypernet = None, None
    if len(functional.spec):
        encoder = _encoder(config, tasks)
        hypernet = _hypernet(config, functional.spec, functional)
    class_head = ClassHead(functional.feature_dim, head.hidden) if head.enabled else None
    return HyperModel(encoder, hypernet, functional, kind=kind,
                      finetune_steps=config.finetune.steps, finetune_lr=config.finetune.lr,
                      class_head=class_head)


def _encoder(config: RunConfig, tasks: TaskSource) -> nn.Module:
    enc = config.encoder
    if enc.kind == "set":
        x_encoder: nn.Module | None = None
        x_dim = 1
        for s in tasks.x_shape:
            x_dim *= s
        if enc.x_encoder == "conv4":  # images -> conv-4 features, trained with the encoder
            if len(tasks.x_shape) != 3:
                raise ConfigError(f"encoder.x_encoder: conv4 needs image inputs [C, H, W]; "
                                  f"{tasks.name!r} has {list(tasks.x_shape)}")
            channels, size = tasks.x_shape[0], tasks.x_shape[1]
            backbone = Conv4(in_channels=channels, image_size=size)
            x_encoder = nn.Sequential(backbone.features, nn.Flatten())
            x_dim = backbone.head.in_features
        classification = tasks.task_kind == "classification"
        return SetEncoder(x_dim, tasks.out_dim, enc.dim, hidden=enc.hidden,
                          num_classes=tasks.out_dim if classification else None,
                          pooling=enc.pooling, x_encoder=x_encoder)
    if enc.kind == "task_id":
        assert enc.num_tasks is not None
        return TaskEmbedding(enc.num_tasks, enc.dim)
    if enc.kind == "hashed":
        return HashedLabelEncoder(enc.dim, buckets=enc.buckets)
    if enc.kind == "features":
        assert enc.in_dim is not None
        return FeatureEncoder(enc.in_dim, enc.dim, hidden=(enc.hidden,))
    return TextEncoder(enc.dim)


def _hypernet(config: RunConfig, spec: ParamSpec, target: FunctionalTarget) -> nn.Module:
    hyper, z_dim = config.hypernet, config.encoder.dim
    if hyper.kind == "mlp":
        return MLPHyperNet(spec, z_dim, hidden=hyper.hidden, init=hyper.init)
    if hyper.kind == "chunked":
        return ChunkedHyperNet(spec, z_dim, chunk_size=hyper.chunk_size,
                               chunk_dim=hyper.chunk_dim, hidden=hyper.hidden, init=hyper.init)
    return DeltaHyperNet(spec, z_dim, hidden=hyper.hidden, base=target.initial_params())


def load_learner(run_dir: str | Path, *, which: str = "best",
                 target: nn.Module | None = None) -> tuple[nn.Module, RunConfig, TaskSource, str]:
    """Rebuild a trained learner from ``run_dir/{which}.safetensors`` (no unpickling).

    Returns ``(learner, config, tasks, content_id)``; built-in targets are rebuilt from the
    config, a custom one must be passed as ``target=``.
    """
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    weights, _, meta = load_checkpoint(Path(run_dir) / f"{which}.safetensors")
    config = RunConfig.from_dict(meta["config"])
    tasks = build_tasks(config)
    learner = build_learner(config, tasks, target)
    try:
        learner.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{run_dir}: weights do not fit the rebuilt model "
                              f"({str(err).splitlines()[0]})") from None
    learner.eval()
    return learner, config, tasks, str(meta["content_id"])
