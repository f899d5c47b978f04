"""``Episode``: a batch of T tasks, each with a support set and a query set."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

Descriptor = Tensor | list[str] | None
MAX_WAYS = 100_000  # a larger class label is a mistake, not a task (it would allocate ways x D)


@dataclass
class Episode:
    """T tasks, S support and Q query examples each; the one input type of encoders and models.

    Arguments:
        support_x: ``[T, S, *x_shape]`` support inputs.
        support_y: ``[T, S]`` integer class labels, or ``[T, S, *y_shape]`` regression targets.
        query_x: ``[T, Q, *x_shape]`` query inputs.
        query_y: ``[T, Q, ...]`` query targets, or ``None`` when only predicting.
        descriptor: task ids ``[T]`` (long), feature vectors ``[T, F]`` (float), or ``T`` strings
            (labels or text descriptions); ``None`` when the support set is the descriptor.
        support_mask: ``[T, S]`` bool, True where a support example is real, when sizes differ.
        ways: the number of classes of a classification episode when the sampler knows it
            (saves reading the labels, a device sync, on every training step); ``None`` reads
            it from ``support_y`` when needed (``episode_ways``).

    Example:
        >>> ep = Episode(torch.randn(4, 5, 1), torch.randn(4, 5, 1), torch.randn(4, 10, 1), None)
        >>> ep.num_tasks
        4
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor | None = None
    descriptor: Descriptor = None
    support_mask: Tensor | None = None
    ways: int | None = None

    @property
    def num_tasks(self) -> int:
        return int(self.query_x.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Episode:
        """A copy with every tensor on ``device`` (strings stay as they are), and floating
        tensors cast to ``dtype`` when given (integer labels and ids keep theirs); self when
        nothing changes."""
        device = torch.device(device)

        def moved(v: Tensor) -> Tensor:
            cast = dtype if dtype is not None and v.is_floating_point() else v.dtype
            return v.to(device=device, dtype=cast)

        tensors = [v for v in (self.support_x, self.support_y, self.query_x, self.query_y,
                               self.descriptor, self.support_mask) if isinstance(v, Tensor)]
        if all(v.device == device and (dtype is None or not v.is_floating_point()
                                       or v.dtype == dtype) for v in tensors):
            return self
        values: dict[str, Any] = {
            f.name: (moved(v) if isinstance(v, Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Episode(**values)

    def task(self, index: int) -> Episode:
        """The sub-episode holding only task ``index`` (task dimension kept, of size 1)."""
        return self.slice(index, index + 1)

    def slice(self, start: int, stop: int) -> Episode:
        """The sub-episode of tasks ``start:stop``."""
        sl = slice(start, stop)
        desc = self.descriptor
        return replace(
            self,
            support_x=self.support_x[sl],
            support_y=self.support_y[sl],
            query_x=self.query_x[sl],
            query_y=None if self.query_y is None else self.query_y[sl],
            descriptor=desc[sl] if desc is not None else None,
            support_mask=None if self.support_mask is None else self.support_mask[sl],
        )

    def problems(self) -> list[str]:
        """Every inconsistency of this episode, each naming the field (empty when valid).

        Checks shapes and the task dimension, dtypes, empty support sets, NaN/Inf and the mask.
        Called at public entry points, never inside the vmapped hot path (it syncs the device).
        """
        out: list[str] = []
        tensors = {"support_x": self.support_x, "support_y": self.support_y,
                   "query_x": self.query_x, "query_y": self.query_y}
        for name, t in tensors.items():
            if t is None:
                continue
            if not isinstance(t, Tensor):
                out.append(f"{name} must be a torch.Tensor, got {type(t).__name__}")
                continue
            if t.dim() < 2:
                out.append(f"{name} must have shape [T, N, ...] (task dim first); got "
                           f"{list(t.shape)}")
            elif t.is_floating_point() and not bool(torch.isfinite(t).all()):
                out.append(f"{name} contains NaN or Inf")
        if out:
            return out
        num_tasks = self.num_tasks
        if num_tasks == 0:
            return ["the episode has no tasks (T = 0 in dim 0 of query_x)"]
        for name, t in tensors.items():
            if t is not None and t.shape[0] != num_tasks:
                out.append(f"{name} has {t.shape[0]} tasks in dim 0 but query_x has {num_tasks}")
        if self.support_x.shape[:2] != self.support_y.shape[:2]:
            out.append(f"support_x {list(self.support_x.shape)} and support_y "
                       f"{list(self.support_y.shape)} must agree in [T, S]")
        if self.query_y is not None and self.query_x.shape[:2] != self.query_y.shape[:2]:
            out.append(f"query_x {list(self.query_x.shape)} and query_y "
                       f"{list(self.query_y.shape)} must agree in [T, Q]")
        if self.support_x.shape[2:] != self.query_x.shape[2:]:
            out.append(f"support_x examples {list(self.support_x.shape[2:])} and query_x "
                       f"examples {list(self.query_x.shape[2:])} must have the same shape")
        if self.support_x.dtype != self.query_x.dtype:
            out.append(f"support_x dtype {self.support_x.dtype} differs from query_x dtype "
                       f"{self.query_x.dtype}")
        mask = self.support_mask
        if mask is not None:
            if mask.dtype != torch.bool:
                out.append(f"support_mask must be bool, got {mask.dtype}")
            elif tuple(mask.shape) != tuple(self.support_x.shape[:2]):
                out.append(f"support_mask must have shape [T, S] = "
                           f"{list(self.support_x.shape[:2])}, got {list(mask.shape)}")
            elif mask.numel() and not bool(mask.any(dim=1).all()):
                empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
                out.append(f"support set is empty for tasks {empty} (support_mask all False)")
        if self.ways is not None and (isinstance(self.ways, bool) or not isinstance(self.ways, int)
                                      or not 1 <= self.ways <= MAX_WAYS):
            out.append(f"ways must be an int in 1..{MAX_WAYS} or None; got {self.ways!r}")
        elif (self.ways is not None and not self.support_y.is_floating_point()
              and self.support_y.numel() and int(self.support_y.max()) >= self.ways):
            out.append(f"support_y holds labels >= ways = {self.ways}")
        out.extend(_descriptor_problems(self.descriptor, num_tasks))
        return out

    def validate(self) -> Episode:
        """Raise one ``ValueError`` listing every problem (see ``problems``); return self."""
        found = self.problems()
        if found:
            raise ValueError("invalid Episode:\n  - " + "\n  - ".join(found))
        return self


def episode_ways(episode: Episode) -> int:
    """Number of classes of a classification episode: ``episode.ways`` when the sampler set
    it, else the largest support label + 1 (one device sync)."""
    if episode.ways is not None:
        return episode.ways
    y = episode.support_y
    if y.is_floating_point() or y.numel() == 0:
        raise ValueError(f"episode_ways needs integer class labels in a non-empty support_y; "
                         f"got {list(y.shape)} {y.dtype}")
    ways = int(y.max()) + 1
    if ways > MAX_WAYS:
        raise ValueError(f"support_y holds class label {ways - 1}; at most {MAX_WAYS} classes "
                         f"(labels 0..{MAX_WAYS - 1}) are supported")
    return ways


def _descriptor_problems(descriptor: Descriptor, num_tasks: int) -> list[str]:
    if descriptor is None:
        return []
    if isinstance(descriptor, Tensor):
        if descriptor.dim() == 0 or descriptor.shape[0] != num_tasks:
            return [f"descriptor must have {num_tasks} entries in dim 0 (one per task); got "
                    f"shape {list(descriptor.shape)}"]
        if descriptor.is_floating_point() and not bool(torch.isfinite(descriptor).all()):
            return ["descriptor contains NaN or Inf"]
        return []
    if isinstance(descriptor, (list, tuple)):
        if len(descriptor) != num_tasks:
            return [f"descriptor list must have {num_tasks} strings (one per task); got "
                    f"{len(descriptor)}"]
        bad = [type(d).__name__ for d in descriptor if not isinstance(d, str)]
        if bad:
            return [f"descriptor list must hold strings; found {sorted(set(bad))}"]
        return []
    return [f"descriptor must be a Tensor, a list of str or None; got {type(descriptor).__name__}"]


def require_finite(tensors: Iterable[Tensor], what: str) -> None:
    """Raise naming the tasks (dim 0) whose ``what`` hold NaN or Inf (one device sync)."""
    bad: set[int] = set()
    for t in tensors:
        finite = torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
        if not bool(finite.all()):
            bad.update((~finite).nonzero().flatten().tolist())
    if bad:
        raise ValueError(f"the {what} of tasks {sorted(bad)[:10]} are not finite: their support "
                         "values (or descriptors) lie far outside what the model was trained on")
