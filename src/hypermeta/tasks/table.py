"""Your own table as few-shot tasks: one task per distinct value of a task column.

Declared in YAML, no code::

    tasks: {name: table, path: path/to/your/data.csv, task_column: store,
            target_column: sales, kind: regression, shots: 5, queries: 10,
            fractions: [0.6, 0.2, 0.2], seed: 0}

A CSV file (read with the stdlib ``csv``; a header row, then one example per row) or, when
``pyarrow`` is installed, a Parquet file (``.parquet``/``.pq``). Each episode is one task: its
``shots`` support and ``queries`` query rows are drawn without replacement from the rows of
that task. Features are the numeric columns, used as they are (scale them beforehand if their
ranges differ wildly). Tasks, not rows, are split into train/val/test.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from hypermeta.episodes import Episode
from hypermeta.kinds import get_kind
from hypermeta.tasks.base import SPLITS, Split, TaskSource, check_split
from hypermeta.tasks.folder import resolve_split
from hypermeta.tasks.omniglot import sha256_file, sha256_lines

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")


class TableTasks(TaskSource):
    """Few-shot tasks from rows grouped by task: a task's episode is ``shots + queries`` of
    its rows, drawn without replacement; tasks (not rows) are split into train/val/test.

    Arguments:
        x: ``[N, F]`` features of every row.
        y: ``[N]`` targets: floats (regression) or class indices ``0..C-1`` (classification).
        task_of_row: the task name of each of the ``N`` rows.
        kind: ``"regression"`` or ``"classification"``.
        shots, queries: support and query rows per task.
        split: ``{"train": [...], "val": [...], "test": [...]}`` task names (disjoint).
        class_names: the name of each class index for classification (its length is C;
            default ``max(y) + 1`` classes named by their index).
        feature_names: the name of each of the F features (default ``x0, x1, ...``).
        name: family name (it also seeds the fixed evaluation episodes).
        provenance: digests of the data and split (``provenance()``, recorded in checkpoints).

    Episodes: ``x [T, S|Q, F]`` float32; ``y [T, S|Q, 1]`` float32 (regression) or
    ``[T, S|Q]`` long (classification, ``out_dim = C``); the descriptor is the task names.

    Example:
        >>> tasks = TableTasks(x, y, names, kind="regression", shots=5, queries=10,
        ...                    split={"train": ["a", "b"], "val": ["c"], "test": ["d"]})
        >>> tasks.sample("train", 8, torch.Generator().manual_seed(0)).support_x.shape
        torch.Size([8, 5, F])
    """

    def __init__(self, x: np.ndarray | Tensor, y: np.ndarray | Tensor,
                 task_of_row: Sequence[str], *, kind: str, shots: int, queries: int,
                 split: Mapping[str, Sequence[str]], class_names: Sequence[str] | None = None,
                 feature_names: Sequence[str] | None = None, name: str = "table",
                 provenance: Mapping[str, Any] | None = None) -> None:
        self.kind = get_kind(kind)
        x_t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, Tensor)
                              else x).float()
        y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
        problems = []
        if x_t.dim() != 2 or x_t.shape[0] != y_t.shape[0] or len(task_of_row) != len(y_t):
            problems.append(f"x must be [N, F], y [N] and task_of_row N names; got x "
                            f"{list(x_t.shape)}, y {list(y_t.shape)}, {len(task_of_row)} names")
        elif not bool(torch.isfinite(x_t).all()):
            problems.append("x contains NaN or Inf")
        if min(shots, queries) < 1:
            problems.append(f"shots and queries must be >= 1; got {shots}, {queries}")
        if problems:
            raise ValueError("TableTasks: " + "; ".join(problems))
        self.name, self.shots, self.queries = name, shots, queries
        self.x = x_t  # (N, F)
        self.x_shape = (int(x_t.shape[1]),)
        self.feature_names = ([str(f) for f in feature_names] if feature_names is not None
                              else [f"x{i}" for i in range(self.x_shape[0])])
        self.class_names: list[str] | None = None
        if self.kind.uses_classes:
            self.y = y_t.long()  # (N,) class indices
            count = len(class_names) if class_names is not None else int(self.y.max()) + 1
            self.class_names = ([str(c) for c in class_names] if class_names is not None
                                else [str(i) for i in range(count)])
            self.out_dim = count
            if len(self.y) and not 0 <= int(self.y.min()) <= int(self.y.max()) < count:
                raise ValueError(f"TableTasks: class indices must lie in 0..{count - 1}")
        else:
            self.y = y_t.float().reshape(-1, 1)  # (N, 1) values
            self.out_dim = 1
        self.split = {s: [str(t) for t in split.get(s, [])] for s in SPLITS}
        self._provenance = dict(provenance) if provenance is not None else None
        groups: dict[str, list[int]] = {}
        for row, task in enumerate(task_of_row):
            groups.setdefault(str(task), []).append(row)
        self._rows = {t: torch.tensor(rows, dtype=torch.long) for t, rows in groups.items()}
        used = [t for s in SPLITS for t in self.split[s]]
        unknown = sorted({t for t in used if t not in self._rows})
        if unknown:
            problems.append(f"the split names tasks without rows: {unknown[:10]}")
        per_task = shots + queries
        small = [f"{t} ({len(self._rows[t])})" for t in used
                 if t in self._rows and len(self._rows[t]) < per_task]
        if small:
            problems.append(f"tasks with fewer than shots + queries = {per_task} rows: "
                            f"{small[:10]}{' ...' if len(small) > 10 else ''} (drop them from "
                            "the split, or lower shots/queries)")
        if not self.split["train"]:
            problems.append("the train split has no tasks")
        if problems:
            raise ValueError("TableTasks: " + "; ".join(problems))

    def sample(self, split: Split, num_tasks: int, generator: torch.Generator) -> Episode:
        check_split(split)
        pool = self.split[split]
        if not pool:
            raise ValueError(f"split {split!r} of {self.name} has no tasks")
        per_task = self.shots + self.queries
        chosen = torch.randint(len(pool), (num_tasks,), generator=generator).tolist()
        rows = torch.empty(num_tasks, per_task, dtype=torch.long)  # (T, K+Q) row indices
        for t, index in enumerate(chosen):
            members = self._rows[pool[index]]
            rows[t] = members[torch.randperm(len(members), generator=generator)[:per_task]]
        x = self.x[rows]  # (T, K+Q, F)
        y = self.y[rows]  # (T, K+Q, 1) float | (T, K+Q) long
        k = self.shots
        return Episode(x[:, :k], y[:, :k], x[:, k:], y[:, k:],
                       descriptor=[pool[i] for i in chosen],
                       ways=self.out_dim if self.kind.uses_classes else None)

    def provenance(self) -> dict[str, Any]:
        if self._provenance is not None:
            return dict(self._provenance)
        return {"tasks_sha256": {s: sha256_lines(self.split[s]) for s in SPLITS}}


# ----------------------------------------------------------------------------- reading files
def read_columns(path: str | Path) -> dict[str, list[Any]]:
    """The columns of a CSV (header row first) or Parquet file, ``{name: values}`` in file
    order (CSV values are strings; Parquet values Python objects, ``None`` when missing).

    Raises ``FileNotFoundError``, ``ImportError`` for Parquet without ``pyarrow`` and
    ``ValueError`` for an empty file, duplicate column names or ragged CSV rows.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"table {str(path)!r} does not exist")
    if file.suffix.lower() in PARQUET_SUFFIXES:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"reading the Parquet file {file} needs pyarrow: pip install "
                              "pyarrow (or save the table as CSV)") from None
        table = pq.read_table(file)
        header = [str(c) for c in table.column_names]
        columns: dict[str, list[Any]] = {str(k): v for k, v in table.to_pydict().items()}
    else:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first name
        with open(file, newline="", encoding="utf-8-sig") as handle:
            lines = [row for row in csv.reader(handle) if row]  # blank lines are no rows
        if not lines:
            raise ValueError(f"table {file} is empty; want a header row, then one row per "
                             "example")
        header = [h.strip() for h in lines[0]]
        ragged = [i for i, row in enumerate(lines[1:], 1) if len(row) != len(header)]
        if ragged:
            raise ValueError(f"table {file}: rows {ragged[:10]} do not have the "
                             f"{len(header)} values of the header {header}")
        columns = {h: [row[j] for row in lines[1:]] for j, h in enumerate(header)}
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise ValueError(f"table {file} has duplicate column names {duplicates}")
    if not header or not next(iter(columns.values()), []):
        raise ValueError(f"table {file} has no rows (columns: {header})")
    return columns


def _number(value: Any) -> float:
    """A cell as a float; ``ValueError`` when it is not a number (``nan`` parses: see below)."""
    if value is None or isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return float(value)
    return float(str(value).strip())


def _is_numeric(values: list[Any]) -> bool:
    """Every non-empty cell parses as a number and at least one cell is not empty."""
    present = [v for v in values if v is not None and str(v).strip() != ""]
    try:
        for v in present:
            _number(v)
    except ValueError:
        return False
    return bool(present)


def _numbers(column: str, values: list[Any], problems: list[str]) -> np.ndarray:
    """``[N]`` float64 of a column, appending what is wrong (non-numeric, missing, NaN/Inf,
    naming the 1-based data rows) to ``problems``."""
    out = np.zeros(len(values))
    bad: list[str] = []
    for i, value in enumerate(values):
        try:
            out[i] = _number(value)
        except ValueError:
            bad.append(f"row {i + 1}: {value!r}")
            continue
        if not math.isfinite(out[i]):
            bad.append(f"row {i + 1}: {value!r}")
    if bad:
        problems.append(f"column {column!r} needs finite numbers; got {bad[:5]}"
                        f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}")
    return out


def _class_order(labels: list[str]) -> list[str]:
    """The class names in label order: numerically when all are numbers, else as strings."""
    distinct = sorted(set(labels))
    if _is_numeric(distinct):
        return sorted(distinct, key=_number)
    return distinct


# ----------------------------------------------------------------------------- the family
def table_tasks(*, path: str, task_column: str, target_column: str,
                feature_columns: list[str] | None = None,
                kind: Literal["regression", "classification"] = "regression",
                shots: int = 5, queries: int = 10, tasks: dict[str, list[str | int]] | None = None,
                fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                seed: int = 0) -> TableTasks:
    """Few-shot regression or classification over your own table, one task per distinct value
    of ``task_column``.

    Arguments:
        path: a CSV file (header row first), or Parquet (``.parquet``/``.pq``, needs pyarrow).
        task_column: the column naming each row's task.
        target_column: the column to predict: numbers (regression) or class labels
            (classification; its distinct values become classes ``0..C-1``, in numeric order
            when all are numbers, else in string order).
        feature_columns: the input columns, in this order; default every other column whose
            values are all numbers.
        kind: ``"regression"`` (y ``[T, N, 1]`` float) or ``"classification"`` (y ``[T, N]``
            long, ``out_dim`` = the number of classes in the whole table).
        shots, queries: support and query rows per task (every task used needs
            ``shots + queries`` rows).
        tasks: explicit task-disjoint split ``{"train": [...], "val": [...], "test": [...]}``
            of task values (numbers are read as their text); a split left out is empty.
        fractions: train/val/test shares of the tasks when ``tasks`` is not given.
        seed: seed of the shuffle of the sorted task names when ``tasks`` is not given.

    Returns:
        a ``TableTasks`` named ``"table"`` whose ``provenance()`` holds the file's sha256
        (``data_sha256``) and each split's task names' sha256 (``tasks_sha256``).

    Example:
        >>> tasks = table_tasks(path="sales.csv", task_column="store",
        ...                     target_column="sales", shots=5, queries=10)
        >>> tasks.sample("train", 8, torch.Generator().manual_seed(0)).query_y.shape
        torch.Size([8, 10, 1])
    """
    columns = read_columns(path)
    header = list(columns)
    problems = []
    wanted = [task_column, target_column, *(feature_columns or [])]
    missing = [c for c in dict.fromkeys(wanted) if c not in columns]
    if missing:
        raise ValueError(f"table {path}: no column(s) {missing}; its columns are {header}")
    if feature_columns is None:
        others = [c for c in header if c not in (task_column, target_column)]
        features = [c for c in others if _is_numeric(columns[c])]
        skipped = [c for c in others if c not in features]
        if skipped:
            log.info("table %s: non-numeric columns %s are not features", path, skipped)
        if not features:
            raise ValueError(f"table {path}: no numeric feature column besides "
                             f"{task_column!r} and {target_column!r} (columns: {header})")
    else:
        features = list(feature_columns)
        leaked = sorted({task_column, target_column} & set(features))
        if leaked:
            problems.append(f"feature_columns must not hold the task or target column {leaked}")
        if not features:
            problems.append("feature_columns is empty")
    rows = len(columns[task_column])
    x = np.zeros((rows, len(features)))  # (N, F)
    for j, column in enumerate(features):
        x[:, j] = _numbers(column, columns[column], problems)
    task_of_row = [str(v).strip() if v is not None else "" for v in columns[task_column]]
    blank = [i + 1 for i, t in enumerate(task_of_row) if not t]
    if blank:
        problems.append(f"column {task_column!r} is empty in rows {blank[:10]}")
    class_names: list[str] | None = None
    if kind not in ("regression", "classification"):
        raise ValueError(f"kind must be 'regression' or 'classification', got {kind!r}")
    if get_kind(kind).uses_classes:
        labels = [str(v).strip() if v is not None else "" for v in columns[target_column]]
        blank = [i + 1 for i, v in enumerate(labels) if not v]
        if blank:
            problems.append(f"column {target_column!r} is empty in rows {blank[:10]}")
        class_names = _class_order([v for v in labels if v])
        index = {name: i for i, name in enumerate(class_names)}
        y = np.array([index.get(v, 0) for v in labels], dtype=np.int64)  # (N,)
    else:
        y = _numbers(target_column, columns[target_column], problems)  # (N,)
    if problems:
        raise ValueError(f"table {path}: " + "; ".join(problems))
    split = resolve_split(sorted(set(task_of_row)), tasks, fractions, seed, what="tasks")
    provenance = {"data_sha256": sha256_file(Path(path).expanduser()),
                  "tasks_sha256": {s: sha256_lines(split[s]) for s in SPLITS}}
    try:
        source = TableTasks(x, y, task_of_row, kind=kind, shots=shots, queries=queries,
                            split=split, class_names=class_names, feature_names=features,
                            provenance=provenance)
    except ValueError as err:
        raise ValueError(f"table {path}: {str(err).removeprefix('TableTasks: ')}") from None
    log.info("table tasks: %d rows, %d features, tasks train %d / val %d / test %d", rows,
             len(features), *(len(split[s]) for s in SPLITS))
    return source
