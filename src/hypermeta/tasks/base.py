"""What every task source provides: train/val/test splits, seeded sampling, fixed eval sets."""

from __future__ import annotations

import abc
import math
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor

from hypermeta.encoders import stable_hash
from hypermeta.episodes import Episode
from hypermeta.kinds import TaskKind, get_kind

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


def split_seed(family: str, split: str) -> int:
    """The documented seed of a fixed evaluation set: a stable hash of ``"family/split"``.

    Independent of any training seed, so evaluation tasks never depend on how a run was seeded.
    """
    return stable_hash(f"{family}/{split}") % (2**63)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


class TaskSource(abc.ABC):
    """A task family with ``train`` / ``val`` / ``test`` splits.

    ``sample`` draws random tasks of a split with an explicit generator (meta-training);
    ``fixed_tasks`` returns the split's fixed evaluation set (same every call and process).

    Attributes:
        name: the family name (it also seeds the fixed evaluation sets).
        kind: the ``TaskKind`` of its tasks (loss, metric, label form, JSON output).
        x_shape: shape of one input example.
        x_dtype: dtype of the inputs (``torch.long`` for ids or tokens).
        input_format: the registered ``INPUT_DECODERS`` name that turns JSON request values
            into inputs (``"numbers"``; ``"integers"`` for ids).
        out_dim: regression target width, or the number of ways for class labels.
    """

    name: str
    kind: TaskKind
    x_shape: tuple[int, ...]
    x_dtype: torch.dtype = torch.float32
    input_format: str = "numbers"
    out_dim: int  # regression target width, or the number of ways for classification
    shots: int
    queries: int
    default_eval_tasks: dict[str, int] = {"val": 200, "test": 1000}

    @abc.abstractmethod
    def sample(self, split: Split, num_tasks: int, generator: torch.Generator) -> Episode:
        """``num_tasks`` random tasks of ``split`` (deterministic given the generator state)."""

    def fixed_tasks(self, split: Split, count: int | None = None) -> Episode:
        """The fixed evaluation tasks of ``split`` (``val``: 200, ``test``: 1000 by default)."""
        check_split(split)
        if split == "train":
            raise ValueError("fixed_tasks is for 'val' and 'test'; sample 'train' tasks instead")
        count = self.default_eval_tasks[split] if count is None else count
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        generator = torch.Generator().manual_seed(split_seed(self.name, split))
        return self._fixed(split, count, generator)

    def _fixed(self, split: Split, count: int, generator: torch.Generator) -> Episode:
        return self.sample(split, count, generator)

    def support_episode(self, x: Tensor, y: Tensor) -> Episode:
        """One task whose support set is ``x [S, *x_shape]`` and ``y`` in the kind's label
        form (``[S]`` class labels; ``[S]``/``[S, out_dim]`` values), converted to this
        family's dtypes (for generation). Labels the kind refuses raise ``ValueError``."""
        problems = self.kind.label_problems(y, self.out_dim)
        if problems:
            raise ValueError("support labels: " + "; ".join(problems))
        x = x.to(self.x_dtype)
        y = self.kind.labels(y, self.out_dim)
        return Episode(x[None], y[None], x[None, :1])

    def descriptor_episode(self, descriptor: Tensor | list[str]) -> Episode:
        """One task given by its descriptor alone (an empty support set of the right shapes)."""
        return Episode(torch.zeros(1, 0, *self.x_shape, dtype=self.x_dtype),
                       self.kind.empty_labels(1, self.out_dim),
                       torch.zeros(1, 1, *self.x_shape, dtype=self.x_dtype),
                       descriptor=descriptor)

    def described_episode(self, described: Tensor, support: Episode | None = None) -> Episode:
        """One task whose classes are given by their encoded descriptions ``[N, *x_shape]``
        (class ``i`` = label ``i``), with the labelled ``support`` episode when there is one
        (else no example: zero-shot), for a class head that reads descriptions."""
        if described.dim() < 1 or len(described) == 0:
            raise ValueError("descriptions is empty: one description per class is needed")
        if support is None:
            support = Episode(described[:0][None], self.kind.empty_labels(1, self.out_dim),
                              described[None, :1])
        return replace(support, descriptor=described[None], ways=len(described))

    def properties(self, episode: Episode) -> dict[str, Tensor]:
        """Per-task properties of ``episode`` worth colouring a task map by (``{name: [T]}``;
        ``hypermeta.inspect``). None by default; function families name their theta."""
        return {}

    def provenance(self) -> dict[str, Any]:
        """What decides which data this family reads — data files and class lists with their
        sha256 digests — recorded in every checkpoint; ``eval`` on a source whose provenance
        differs is refused unless asked for. Generated families (sinusoid, ...) have none."""
        return {}


class FunctionTasks(TaskSource):
    """Continuous regression families ``y = f_theta(x) (+ noise)``, theta drawn per task.

    Train tasks are fresh draws; val/test are fixed seeded sets of tasks with
    ``eval_queries`` query points each. The descriptor of each task is its true theta.
    """

    kind = get_kind("regression")
    x_shape = (1,)
    out_dim = 1
    theta_names: tuple[str, ...] = ()  # names of the theta columns (task map colours)

    def __init__(self, *, shots: int, queries: int = 10, eval_queries: int = 100,
                 x_range: tuple[float, float] = (-5.0, 5.0), noise: float = 0.0) -> None:
        if shots < 1 or queries < 1 or eval_queries < 1:
            raise ValueError(f"shots, queries and eval_queries must be >= 1; got {shots}, "
                             f"{queries}, {eval_queries}")
        self.shots, self.queries, self.eval_queries = shots, queries, eval_queries
        self.x_range, self.noise = x_range, noise

    @abc.abstractmethod
    def draw_theta(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        """``[T, D]`` task parameters."""

    @abc.abstractmethod
    def function(self, theta: Tensor, x: Tensor) -> Tensor:
        """``theta [T, D]``, ``x [T, N, 1]`` -> ``y [T, N, 1]`` (noise-free)."""

    def _draw(self, num_tasks: int, queries: int, generator: torch.Generator) -> Episode:
        theta = self.draw_theta(num_tasks, generator)
        low, high = self.x_range
        x = low + (high - low) * torch.rand(num_tasks, self.shots + queries, 1,
                                            generator=generator)
        y = self.function(theta, x)
        if self.noise:
            y = y + self.noise * torch.randn(y.shape, generator=generator)
        return Episode(x[:, : self.shots], y[:, : self.shots], x[:, self.shots:],
                       y[:, self.shots:], descriptor=theta)

    def properties(self, episode: Episode) -> dict[str, Tensor]:
        theta = episode.descriptor
        if not isinstance(theta, Tensor) or theta.dim() != 2:
            return {}
        names = self.theta_names or tuple(f"theta{i}" for i in range(theta.shape[1]))
        return {name: theta[:, i] for i, name in enumerate(names[: theta.shape[1]])}

    def sample(self, split: Split, num_tasks: int, generator: torch.Generator) -> Episode:
        check_split(split)  # every split of a continuous family draws from the same prior
        return self._draw(num_tasks, self.queries, generator)

    def _fixed(self, split: Split, count: int, generator: torch.Generator) -> Episode:
        return self._draw(count, self.eval_queries, generator)


def uniform(low: float, high: float, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


PI = math.pi
