"""N-way K-shot classification episodes from labelled arrays, split over classes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hypermeta.episodes import Descriptor, Episode
from hypermeta.kinds import get_kind
from hypermeta.tasks.base import SPLITS, Split, TaskSource, check_split


class LabeledArrayTasks(TaskSource):
    """Few-shot classification over any labelled array ``x [N, ...]``, ``y [N]`` (int).

    Classes, not examples, are split: no val/test class is ever seen in meta-training. Each
    episode picks ``ways`` classes of the split, ``shots + queries`` examples of each, and
    relabels the classes ``0..ways-1`` in random order.

    Arguments:
        x: inputs, one row per example (numpy or torch). Kept in its dtype (uint8 images stay
            compact); each sampled episode is converted to float32 and multiplied by ``x_scale``.
        y: integer class of each row.
        ways, shots, queries: N, K and the query examples per class.
        classes: explicit ``{"train": [...], "val": [...], "test": [...]}`` class lists, or None
            to split the sorted class ids by ``fractions`` with a permutation seeded by ``seed``.
        fractions: train/val/test shares of the classes when ``classes`` is None.
        seed: seed of that class permutation.
        name: family name (it also seeds the fixed evaluation episodes).
        x_scale: factor applied to sampled inputs (e.g. 1/255 for uint8 images).
        provenance: digests of the data and class lists this source was built from
            (``provenance()``; recorded in checkpoints). By default the sha256 of the class
            split.

    A split may be empty (e.g. no validation classes when training on train+val); sampling from
    it is then an error.
    """

    kind = get_kind("classification")
    default_eval_tasks = {"val": 200, "test": 600}

    def __init__(self, x: np.ndarray | Tensor, y: np.ndarray | Tensor, *, ways: int = 5,
                 shots: int = 1, queries: int = 15,
                 classes: Mapping[str, Sequence[int]] | None = None,
                 fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0,
                 name: str = "arrays", x_scale: float = 1.0,
                 provenance: Mapping[str, Any] | None = None) -> None:
        x_t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
        y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
        if y_t.dim() != 1 or y_t.is_floating_point() or y_t.shape[0] != x_t.shape[0]:
            raise ValueError(f"y must be integer labels of shape [N] = [{x_t.shape[0]}]; got "
                             f"{list(y_t.shape)} {y_t.dtype}")
        if x_t.is_floating_point() and not bool(torch.isfinite(x_t).all()):
            raise ValueError("x contains NaN or Inf")
        self.x_scale = x_scale
        self._provenance = dict(provenance) if provenance is not None else None
        if min(ways, queries) < 1 or shots < 0:
            raise ValueError(f"ways and queries must be >= 1 and shots >= 0; got {ways}, "
                             f"{shots}, {queries}")
        self.name, self.ways, self.shots, self.queries = name, ways, shots, queries
        self.x, self.y = x_t, y_t.long()
        self.x_shape = tuple(x_t.shape[1:])
        self.out_dim = ways
        all_classes = torch.unique(self.y).tolist()
        self.classes = (split_classes(all_classes, fractions, seed) if classes is None
                        else {s: [int(c) for c in classes.get(s, [])] for s in SPLITS})
        # rows of each class, for sampling without scanning y every episode
        order = torch.argsort(self.y, stable=True)
        counts = torch.bincount(self.y)
        starts = torch.cumsum(counts, 0) - counts
        self._rows = {c: order[starts[c]: starts[c] + counts[c]] for c in all_classes}
        problems = []
        for split in SPLITS:
            members = self.classes[split]
            unknown = sorted(set(members) - set(all_classes))
            if unknown:
                problems.append(f"{split} names classes absent from y: {unknown[:10]}")
            elif 0 < len(members) < ways or (split == "train" and not members):
                problems.append(f"{split} has {len(members)} classes, fewer than ways={ways}")
            else:
                small = [c for c in members if len(self._rows[c]) < shots + queries]
                if small:
                    problems.append(f"{split} classes {small[:10]} have fewer than shots + "
                                    f"queries = {shots + queries} examples")
        overlap = [(a, b) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:]
                   if set(self.classes[a]) & set(self.classes[b])]
        if overlap:
            problems.append(f"class splits overlap: {overlap}")
        if problems:
            raise ValueError("LabeledArrayTasks: " + "; ".join(problems))

    def sample(self, split: Split, num_tasks: int, generator: torch.Generator) -> Episode:
        check_split(split)
        pool = self.classes[split]
        if not pool:
            raise ValueError(f"split {split!r} of {self.name} has no classes")
        per_class = self.shots + self.queries
        rows = torch.empty(num_tasks, self.ways, per_class, dtype=torch.long)
        classes = torch.empty(num_tasks, self.ways, dtype=torch.long)
        for t in range(num_tasks):
            chosen = torch.randperm(len(pool), generator=generator)[: self.ways].tolist()
            for way, index in enumerate(chosen):
                members = self._rows[pool[index]]
                pick = torch.randperm(len(members), generator=generator)[:per_class]
                rows[t, way] = members[pick]
                classes[t, way] = pool[index]
        # (T, ways, K+Q) -> support (T, ways*K), query (T, ways*Q); labels = way index
        labels = torch.arange(self.ways)[None, :, None].expand(num_tasks, self.ways, per_class)
        support_rows = rows[:, :, : self.shots].reshape(num_tasks, -1)
        query_rows = rows[:, :, self.shots:].reshape(num_tasks, -1)
        support_y = labels[:, :, : self.shots].reshape(num_tasks, -1)
        query_y = labels[:, :, self.shots:].reshape(num_tasks, -1)
        def inputs(rows: Tensor) -> Tensor:
            return self.x[rows].float() * self.x_scale

        return Episode(inputs(support_rows), support_y, inputs(query_rows), query_y,
                       descriptor=self.describe(classes), ways=self.ways)

    def describe(self, classes: Tensor) -> Descriptor:
        """The descriptor of episodes whose way ``w`` of task ``t`` is class
        ``classes[t, w]`` (``[T, ways]`` class ids); ``None`` here: the support set describes
        the task. Families with class descriptions return them (``tasks.wordnet``)."""
        return None

    def provenance(self) -> dict[str, Any]:
        if self._provenance is not None:
            return dict(self._provenance)
        text = json.dumps({s: self.classes[s] for s in SPLITS}, sort_keys=True)
        return {"classes_sha256": hashlib.sha256(text.encode()).hexdigest()}


def split_classes(all_classes: list[int], fractions: tuple[float, float, float],
                  seed: int) -> dict[str, list[int]]:
    """Split class (or task) ids into train/val/test by ``fractions`` with a permutation
    seeded by ``seed``; each split's ids sorted. The one split rule of every family."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be 3 non-negative shares summing to 1; got "
                         f"{fractions}")
    perm = torch.randperm(len(all_classes), generator=torch.Generator().manual_seed(seed))
    shuffled = [all_classes[i] for i in perm.tolist()]
    n_train = round(fractions[0] * len(shuffled))
    n_val = round(fractions[1] * len(shuffled))
    return {"train": sorted(shuffled[:n_train]),
            "val": sorted(shuffled[n_train:n_train + n_val]),
            "test": sorted(shuffled[n_train + n_val:])}
