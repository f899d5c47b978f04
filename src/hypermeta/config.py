"""Typed, validated run configuration (pydantic), loaded from YAML, overridable by ``key=value``.

Every problem in a config is collected and raised as one ``ConfigError`` naming the fields and
the allowed values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Method = Literal["hypernet", "maml", "fomaml", "protonet", "scratch"]


class ConfigError(ValueError):
    """A configuration is invalid; the message lists every problem, one per line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TasksConfig(_Strict):
    """Which task family, and its episode shape. Extra keys go to the family's constructor."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = "sinusoid"
    shots: int = Field(10, ge=1)
    queries: int = Field(10, ge=1)


class EncoderConfig(_Strict):
    kind: Literal["set", "task_id", "hashed", "features", "text"] = "set"
    dim: int = Field(64, ge=1)
    hidden: int = Field(128, ge=1)
    pooling: Literal["mean", "attention"] = "mean"
    num_tasks: int | None = Field(None, ge=1, description="for kind=task_id")
    in_dim: int | None = Field(None, ge=1, description="descriptor width for kind=features")
    buckets: int = Field(4096, ge=1, description="for kind=hashed")
    x_encoder: Literal["none", "conv4"] = Field(
        "none", description="embed each support input first (conv4: images -> 64-d features)")


class HypernetConfig(_Strict):
    kind: Literal["mlp", "chunked", "delta"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [128])
    init: Literal["hyperfan_in", "hyperfan_out"] = "hyperfan_in"
    chunk_size: int = Field(256, ge=1)
    chunk_dim: int = Field(16, ge=1)


class GatesConfig(_Strict):
    enabled: bool = Field(False, description="per-task structure gates (hypernet method)")
    sparsity: float = Field(0.0, ge=0, description="weight of the expected active fraction")
    mode: Literal["units", "width"] = Field(
        "units", description="units: a logit per unit; width: one open fraction per site")


class ClassHeadConfig(_Strict):
    enabled: bool = Field(False, description="generate the target's final layer per class "
                                             "from the support set (classification; any ways)")
    module: str = Field("head", description="name of the final nn.Linear")
    hidden: int = Field(256, ge=1, description="width of the head generator's correction MLP")


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
    """One run: a method, its task family, target, encoder, generator and schedules."""

    method: Method = "hypernet"
    seed: int = 0
    tasks: TasksConfig = TasksConfig()
    target: dict[str, Any] = Field(
        default_factory=lambda: {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [40, 40]})
    generate: str | list[str] = "all"
    adapter: Literal["full", "lowrank", "film"] = "full"
    rank: int = Field(4, ge=1)
    batchnorm: Literal["batch", "frozen"] = "batch"
    encoder: EncoderConfig = EncoderConfig()
    hypernet: HypernetConfig = HypernetConfig()
    gates: GatesConfig = GatesConfig()
    class_head: ClassHeadConfig = ClassHeadConfig()
    train: TrainConfig = TrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    maml: MAMLConfig = MAMLConfig()
    scratch: ScratchConfig = ScratchConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        problems = []
        if "name" not in self.target:
            problems.append("target: needs a 'name' (a built-in network, or 'custom' with "
                            "target= passed in code)")
        if self.encoder.kind == "task_id" and self.encoder.num_tasks is None:
            problems.append("encoder.num_tasks: required when encoder.kind is 'task_id'")
        if self.gates.enabled and self.method != "hypernet":
            problems.append("gates.enabled: structure gates need method 'hypernet'")
        if self.class_head.enabled and self.method != "hypernet":
            problems.append("class_head.enabled: a generated class head needs method 'hypernet'")
        if self.generate == "none" and not self.class_head.enabled:
            problems.append("generate: 'none' needs class_head.enabled (else nothing is "
                            "generated)")
        if self.encoder.kind == "features" and self.encoder.in_dim is None:
            problems.append("encoder.in_dim: required when encoder.kind is 'features'")
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
            raise ConfigError(_format(err)) from None

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> RunConfig:
        """Load YAML (or JSON) and apply ``key.sub=value`` overrides (values parsed as YAML)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        return cls.from_dict(apply_overrides(data, overrides or []))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


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


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        message = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}{got_text}")
    count = len(lines)
    return f"invalid config, {count} problem{'s' if count > 1 else ''}:\n" + "\n".join(lines)
