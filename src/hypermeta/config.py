"""Typed, validated run configuration (pydantic), loaded from YAML, overridable by ``key=value``.

Every problem in a config is collected and raised as one ``ConfigError`` naming the fields and
the allowed values.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic_core
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

import hypermeta.encoders  # noqa: F401  (registers the built-in encoders)
import hypermeta.hypernets  # noqa: F401  (registers the built-in hypernetworks)
import hypermeta.networks  # noqa: F401  (registers the built-in targets)
import hypermeta.tasks  # noqa: F401  (registers the built-in task families)
from hypermeta.registry import (
    ENCODERS,
    HYPERNETS,
    METHODS,
    TARGETS,
    TASK_FAMILIES,
    Registry,
    UnknownNameError,
)

CONFIG_VERSION = 2  # 1: hypermeta 0.1.0 (flat encoder/hypernet sections)


class ConfigError(ValueError):
    """A configuration is invalid; the message lists every problem, one per line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@cache
def signature_model(builder: Callable[..., Any]) -> type[BaseModel]:
    """A strict pydantic model of a builder's keyword arguments, from its signature and type
    hints (positional-only parameters, such as a ``BuildContext``, are not config).

    This is how every registered builder's config section is typed: a field the builder does
    not take is an error, a required one must be given, and values are checked against the
    annotations.
    """
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        hints = typing.get_type_hints(target, include_extras=True)  # keep Annotated limits
    except Exception:  # unresolvable annotations: check names, not types
        hints = {}
    fields: dict[str, Any] = {}
    extra: Literal["allow", "forbid"] = "forbid"
    for param in inspect.signature(builder).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            extra = "allow"
        elif param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (hints.get(param.name, Any), default)
    config = ConfigDict(extra=extra, arbitrary_types_allowed=True, strict=False)
    name = getattr(builder, "__name__", "Builder") + "Config"
    model: type[BaseModel] = create_model(name, __config__=config, **fields)
    return model


class _Section(BaseModel):
    """A config section that names a registered builder (``key``) and holds its keywords,
    checked against the builder's signature (``signature_model``)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    registry: ClassVar[Registry[Callable[..., Any]]]
    key: ClassVar[str]
    passthrough: ClassVar[tuple[str, ...]] = ()  # names whose keywords are not checked here

    @model_validator(mode="wrap")
    @classmethod
    def _typed(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(data, BaseModel):
            data = data.model_dump()
        if not isinstance(data, dict):
            return handler(data)
        name = data.get(cls.key, cls.model_fields[cls.key].default)
        if not isinstance(name, str):
            raise _error(cls.key, f"must be a registered name, one of {cls.registry.names()}",
                         name)
        rest = {k: v for k, v in data.items() if k != cls.key}
        if name in cls.passthrough:
            return handler(data)
        try:
            builder = cls.registry.get(name)
        except UnknownNameError as err:
            raise _error(cls.key, str(err), name) from None
        try:
            checked = signature_model(builder).model_validate(rest)
        except ValidationError as err:
            raise pydantic_core.ValidationError.from_exception_data(cls.__name__, [
                InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"],
                                 ctx=e.get("ctx", {}))
                for e in err.errors()]) from None
        return handler({cls.key: name, **checked.model_dump(mode="json")})

    def kwargs(self) -> dict[str, Any]:
        """The builder's keywords (the section without its name)."""
        return {k: v for k, v in self.model_dump().items() if k != self.key}


def _error(field: str, message: str, value: Any) -> pydantic_core.ValidationError:
    return pydantic_core.ValidationError.from_exception_data("config", [InitErrorDetails(
        type=PydanticCustomError("unknown_name", message), loc=(field,), input=value)])


class TasksConfig(_Section):
    """Which task family (``name``, registered in ``TASK_FAMILIES``) and its arguments
    (``shots``, ``queries``, data options, ...), typed by the family's builder."""

    registry = TASK_FAMILIES
    key = "name"
    name: str = "sinusoid"


class TargetConfig(_Section):
    """The target network: a registered ``name`` (``TARGETS``: mlp, conv4, ...) and its
    constructor's arguments, or ``custom`` when the module is passed in code."""

    registry = TARGETS
    key = "name"
    passthrough = ("custom",)
    name: str = "mlp"


class EncoderConfig(_Section):
    """The task encoder: a registered ``kind`` (``ENCODERS``: set, task_id, hashed, features,
    text) and its builder's arguments (e.g. ``dim``)."""

    registry = ENCODERS
    key = "kind"
    kind: str = "set"


class HypernetConfig(_Section):
    """The generator: a registered ``kind`` (``HYPERNETS``: mlp, chunked, delta) and its
    builder's arguments."""

    registry = HYPERNETS
    key = "kind"
    kind: str = "mlp"


class GatesConfig(_Strict):
    enabled: bool = Field(False, description="per-task structure gates (hypernet method)")
    sparsity: float = Field(0.0, ge=0, description="weight of the expected active fraction")
    mode: Literal["units", "width"] = Field(
        "units", description="units: a logit per unit; width: one open fraction per site")
    estimator: Literal["hard_concrete", "deterministic", "ste"] = Field(
        "hard_concrete", description="gates in training: hard-concrete samples, the same "
        "without noise, or straight-through 0/1")
    warmup_steps: int = Field(0, ge=0, description="train this many steps with every gate "
                              "open and no sparsity cost first")
    separate_head: bool = Field(False, description="generate the gates with their own small "
                                "MLP generator (hypernet.SplitHyperNet)")
    head_hidden: list[PositiveInt] = Field([64], description="separate_head: its hidden widths")
    head_lr_scale: float = Field(1.0, gt=0, description="separate_head: its learning rate "
                                 "over train.lr")
    detach: bool = Field(False, description="separate_head: it reads the task embedding "
                         "without gradient (gate losses never reach the encoder)")
    distill_from: str | None = Field(None, description="a trained ungated run folder: its "
                                     "predictions on each query set are a second target")
    distill_weight: float = Field(1.0, ge=0, description="distill_from: weight of the MSE "
                                  "(regression) or KL (classification) to the teacher")


class ClassHeadConfig(_Strict):
    enabled: bool = Field(False, description="generate the target's final layer per class "
                                             "from the support set (classification; any ways)")
    module: str = Field("head", description="name of the final nn.Linear")
    hidden: int = Field(256, ge=1, description="width of the head generator's correction MLP")
    descriptions: bool = Field(False, description="also generate each class's row from its "
                                                  "description (the episode descriptor, one "
                                                  "encoded description per class): zero-shot "
                                                  "and mixed tasks")


class RidgeHeadConfig(_Strict):
    enabled: bool = Field(False, description="fit the target's final layer per task by ridge "
                                             "regression on the support features "
                                             "(regression; R2-D2)")
    module: str = Field("head", description="name of the final nn.Linear")
    l2: float = Field(1.0, gt=0, description="initial ridge strength (learned)")


class TrainConfig(_Strict):
    steps: int = Field(10_000, ge=0)
    meta_batch: int = Field(25, ge=1)
    lr: float = Field(1e-3, gt=0)
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_every: int = Field(2000, ge=1, description="for schedule=step: halve the LR this often")
    clip: float | None = Field(None, gt=0, description="max gradient norm")
    weight_decay: float = Field(0.0, ge=0)
    val_every: int = Field(500, ge=1)
    val_tasks: int = Field(200, ge=1)
    patience: int | None = Field(None, ge=1, description="validations without improvement")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as better")
    pretrain_steps: int = Field(0, ge=0, description="pre-train the target on pooled tasks")
    log_every: int = Field(10, ge=1)


class FinetuneConfig(_Strict):
    steps: int = Field(0, ge=0, description="SGD steps on the support set after generation")
    lr: float = Field(0.01, gt=0)


class MAMLConfig(_Strict):
    inner_lr: float = Field(0.01, gt=0)
    inner_steps: int = Field(1, ge=1)
    test_inner_steps: int = Field(10, ge=0)


class ScratchConfig(_Strict):
    steps: int = Field(100, ge=1)
    lr: float = Field(0.01, gt=0)


class EvalConfig(_Strict):
    tasks: int | None = Field(None, ge=1, description="test tasks (default: the family's set)")
    batch: int = Field(100, ge=1)


class RunConfig(_Strict):
    """One run: a method, its task family, target, encoder, generator and schedules.

    The sections ``tasks``, ``target``, ``encoder`` and ``hypernet`` name a registered builder
    and are typed by its signature, so a field that builder does not take is an error.
    """

    version: int = Field(CONFIG_VERSION, description="config format version")
    method: str = "hypernet"
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch intra-op threads while training "
                                "(default: leave torch's setting)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where fit trains: auto (CUDA when present), cpu, cuda, "
                                    "cuda:N; under torchrun, cuda means this rank's LOCAL_RANK")
    tasks: TasksConfig = Field(default_factory=lambda: TasksConfig.model_validate({}))
    target: TargetConfig = Field(default_factory=lambda: TargetConfig.model_validate(
        {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [40, 40]}))
    generate: str | list[str] = "all"
    adapter: Literal["full", "lowrank", "film"] = "full"
    rank: int = Field(4, ge=1)
    batchnorm: Literal["batch", "frozen"] = "batch"
    encoder: EncoderConfig = Field(default_factory=lambda: EncoderConfig.model_validate({}))
    hypernet: HypernetConfig = Field(default_factory=lambda: HypernetConfig.model_validate({}))
    gates: GatesConfig = GatesConfig()
    class_head: ClassHeadConfig = ClassHeadConfig()
    ridge_head: RidgeHeadConfig = RidgeHeadConfig()
    train: TrainConfig = TrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    maml: MAMLConfig = MAMLConfig()
    scratch: ScratchConfig = ScratchConfig()
    eval: EvalConfig = EvalConfig()

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {METHODS.names()}")
        return method

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != CONFIG_VERSION:
            raise ValueError(f"config version {version} is not {CONFIG_VERSION}; configs of "
                             f"version 1 (hypermeta 0.1.0) load through RunConfig.from_saved")
        return version

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        problems = []
        if self.gates.enabled and self.method != "hypernet":
            problems.append("gates.enabled: structure gates need method 'hypernet'")
        if self.class_head.enabled and self.method != "hypernet":
            problems.append("class_head.enabled: a generated class head needs method 'hypernet'")
        gates = self.gates
        if (gates.warmup_steps or gates.separate_head or gates.distill_from) \
                and not gates.enabled:
            problems.append("gates.warmup_steps / separate_head / distill_from need "
                            "gates.enabled")
        if (gates.detach or gates.head_lr_scale != 1.0) and not gates.separate_head:
            problems.append("gates.detach / gates.head_lr_scale need gates.separate_head")
        if self.ridge_head.enabled and self.method != "hypernet":
            problems.append("ridge_head.enabled: a fitted ridge head needs method 'hypernet'")
        if self.ridge_head.enabled and self.class_head.enabled:
            problems.append("class_head and ridge_head: enable one head")
        if self.generate == "none" and not self.class_head.enabled:
            problems.append("generate: 'none' needs class_head.enabled (else nothing is "
                            "generated)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Validate a plain dict; raise ``ConfigError`` listing every problem."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_errors(err)) from None

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> RunConfig:
        """A config saved by a run (``config.json`` or a checkpoint), of this version or of
        version 1 (hypermeta 0.1.0), which is migrated: its flat ``encoder``/``hypernet``
        sections held every field of every kind, and the fields a kind did not read are
        dropped (they had no effect)."""
        if isinstance(data, dict) and "version" not in data:
            data = _migrate_v1(data)
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> RunConfig:
        """Load YAML (or JSON) and apply ``key.sub=value`` overrides (values parsed as YAML)."""
        return cls.from_dict(read_config_file(
            path, overrides, empty="a run config needs at least a task family and a schedule "
                                   "(see configs/)"))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def _migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(data))
    for section, registry, default in (("encoder", ENCODERS, "set"),
                                       ("hypernet", HYPERNETS, "mlp")):
        value = out.get(section)
        if not isinstance(value, dict):
            continue
        kind = value.get("kind", default)
        if kind not in registry:
            continue
        accepted = set(signature_model(registry.get(kind)).model_fields)
        out[section] = {"kind": kind, **{k: v for k, v in value.items() if k in accepted}}
    out["version"] = CONFIG_VERSION
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "tasks.shots=5"]`` applied to a nested dict (copied)."""
    out: dict[str, Any] = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def read_config_file(path: str | Path, overrides: list[str] | None = None, *,
                     empty: str | None = None) -> dict[str, Any]:
    """A YAML (or JSON) file of config sections with ``key.sub=value`` overrides applied; clear
    errors for a missing file, bad YAML or a non-mapping. An empty file is ``{}``, or an error
    saying ``empty`` when given."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        if empty is not None:
            raise ConfigError(f"{path} is empty; {empty}")
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, not "
                          f"{type(data).__name__}")
    return apply_overrides(data, overrides or [])


def format_errors(err: ValidationError) -> str:
    """A pydantic ``ValidationError`` as one readable message, a line per problem."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        message = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}{got_text}")
    count = len(lines)
    return f"invalid config, {count} problem{'s' if count > 1 else ''}:\n" + "\n".join(lines)
