"""The serving service: one object holding the loaded run, the task store, the cache of
generated networks, input decoding, generation and prediction. The HTTP routes (``app.py``)
are thin calls into it; it knows nothing of HTTP beyond the status a ``ServiceError`` carries.

Registered tasks live in SQLite (WAL, one file in ``state_dir``) so a restart keeps them;
generated networks live in a bounded LRU cache and are regenerated deterministically from the
stored request when evicted. Each task records the checkpoint content id that made it; a server
running another checkpoint answers such a task with 409.
"""

from __future__ import annotations

import collections
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hypermeta.episodes import Episode
from hypermeta.registry import INPUT_DECODERS
from hypermeta.runs import Run
from hypermeta.spec import Params
from hypermeta.tasks.inputs import decode_labels


class ServiceError(Exception):
    """A request the service refuses: ``status`` (4xx) and a message naming what is wrong."""

    def __init__(self, message: str, status: int = 422, field: str = "body") -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def store_path(url: str) -> Path:
    """The SQLite file of a task-store URL: ``sqlite:///relative.db`` or
    ``sqlite:////absolute/path.db`` (SQLAlchemy's spelling). Other databases are not built."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ValueError(f"store URL {url!r} is not a URL; use sqlite:///path/to/tasks.db")
    if scheme.split("+")[0] != "sqlite":
        raise ValueError(f"store URL scheme {scheme!r} is not supported: only sqlite:/// "
                         "(a PostgreSQL store for many machines is future work; see the "
                         "README's 'Scaling out')")
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise ValueError(f"store URL {url!r} names no file; use sqlite:///tasks.db (relative) "
                         "or sqlite:////abs/tasks.db (absolute) -- a shared store must be a file")
    return Path(rest[1:])


class TaskStore:
    """Registered tasks in SQLite (WAL); every write is committed before the reply."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=10000")  # other worker processes write too
        self.db.execute("CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, created REAL, "
                        "content_id TEXT, kind TEXT, request TEXT)")

    def add(self, task_id: str, content_id: str, kind: str, request: dict[str, Any]) -> float:
        created = time.time()
        with self.lock:
            self.db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?)",
                            (task_id, created, content_id, kind, json.dumps(request)))
        return created

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT id, created, content_id, kind, request FROM tasks "
                                  "WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        return {"task_id": row[0], "created": row[1], "content_id": row[2], "kind": row[3],
                "request": json.loads(row[4])}

    def delete(self, task_id: str) -> bool:
        with self.lock:
            return self.db.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount > 0

    def count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])

    def close(self) -> None:
        with self.lock:
            self.db.close()


class Metrics:
    """Request counts and latency percentiles per route *template* (unknown paths share one
    label), each latency buffer bounded: memory does not grow with the paths clients send."""

    def __init__(self, window: int = 2048) -> None:
        self.lock = threading.Lock()
        self.window = window
        self.counts: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, collections.deque[float]] = {}

    def record(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.counts[f"{route} {status}"] += 1
            self.latency.setdefault(route, collections.deque(maxlen=self.window)).append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            latency = {}
            for route, values in self.latency.items():
                arr = np.array(values) * 1000
                latency[route] = {"count": len(arr), "p50_ms": float(np.percentile(arr, 50)),
                                  "p99_ms": float(np.percentile(arr, 99))}
            return {"requests": dict(self.counts), "latency": latency}


class TaskService:
    """Everything the server does, over one loaded hypernetwork run.

    Arguments:
        run: a hypernet run (``hypermeta.runs.load_hypermodel``).
        state_dir: folder of the SQLite task database (``tasks.sqlite3``).
        store_file: the database file itself, instead of ``state_dir`` (``--store-url``).
        cache_size: generated task networks kept in memory (LRU).
        max_rows: most rows in a support set or a prediction batch (else 413).
        max_abs_value: largest magnitude of a numeric input, label or descriptor value (else
            422); far beyond any training range, it keeps the model's arithmetic finite.
    """

    def __init__(self, run: Run, *, state_dir: Path | None = None,
                 store_file: Path | None = None, cache_size: int = 128,
                 max_rows: int = 10_000, max_abs_value: float = 1e6) -> None:
        if (state_dir is None) == (store_file is None):
            raise ValueError("give state_dir or store_file (one of them)")
        if cache_size < 1 or max_rows < 1 or not max_abs_value > 0:
            raise ValueError("cache_size and max_rows must be >= 1 and max_abs_value > 0")
        self.max_abs_value = float(max_abs_value)
        self.run, self.model, self.source = run, run.hypermodel, run.tasks
        self.content_id, self.kind = run.content_id, run.tasks.kind
        self.input_format = INPUT_DECODERS.get(self.source.input_format)
        self.cache_size, self.max_rows = cache_size, max_rows
        self.store = TaskStore(store_file or Path(str(state_dir)) / "tasks.sqlite3")
        self.metrics = Metrics()
        self.cache: collections.OrderedDict[str, Params] = collections.OrderedDict()
        self.cache_stats = collections.Counter[str]()
        self.model_lock, self.cache_lock = threading.Lock(), threading.Lock()
        # generation through the lean path (== adapted_params; the model's own otherwise)
        self.fast = self.model.prepare_inference()

    # ------------------------------------------------------------------- decoding requests
    def _rows(self, values: Any, name: str) -> None:
        if isinstance(values, list) and len(values) > self.max_rows:
            raise ServiceError(f"{name} has {len(values)} rows; the limit is {self.max_rows}",
                               413, name)

    def inputs(self, values: Any, name: str = "x") -> Tensor:
        """Request values -> ``[N, *x_shape]`` model inputs (the family's input decoder)."""
        self._rows(values, name)
        try:
            x: Tensor = self.input_format.decode(values, self.source, name)
        except ValueError as err:
            raise ServiceError(str(err), 422, name) from None
        self._bounded(x, name)
        return x

    def _bounded(self, values: Tensor, name: str) -> None:
        if values.is_floating_point() and values.numel() and \
                float(values.abs().max()) > self.max_abs_value:
            raise ServiceError(f"{name} holds a value beyond ±{self.max_abs_value:g} (the "
                               "server's --max-abs-value)", 422, name)

    def support_episode(self, support: dict[str, Any]) -> Episode:
        """One task's support set ``{"x": [...], "y": [...]}`` -> its episode."""
        x = self.inputs(support.get("x"), "support.x")
        self._rows(support.get("y"), "support.y")
        try:
            y = decode_labels(support.get("y"), self.source, "support.y")
        except ValueError as err:
            raise ServiceError(str(err), 422, "support.y") from None
        self._bounded(y, "support.y")
        if len(x) != len(y):
            raise ServiceError(f"support.x has {len(x)} rows but support.y has {len(y)}", 422,
                               "support")
        try:
            return self.source.support_episode(x, y)
        except ValueError as err:
            raise ServiceError(str(err), 422, "support") from None

    @property
    def takes_descriptor(self) -> bool:
        """Whether this model's encoder reads a descriptor (else: the support set)."""
        schema = getattr(self.model.encoder, "descriptor_schema", lambda limit: None)
        return schema(self.max_abs_value) is not None

    @property
    def reads_descriptions(self) -> bool:
        """Whether this model builds each class from its description (zero-shot / mixed)."""
        head = self.model.class_head
        return head is not None and head.descriptions

    def description_episode(self, descriptions: Any, support: dict[str, Any] | None) -> Episode:
        """Class descriptions (class ``i`` = label ``i``), and optionally labelled examples,
        -> one task's episode."""
        if descriptions is None:
            raise ServiceError("this model builds each class from its description: send "
                               "'descriptions' (one per class; 'support' is optional)", 422,
                               "descriptions")
        described = self.inputs(descriptions, "descriptions")  # (N, *x_shape)
        labelled = None if support is None else self.support_episode(support)
        return self.source.described_episode(described, labelled)

    def task_episode(self, request: dict[str, Any]) -> Episode:
        """A task request -> one task's episode. A support-set model needs ``support``; a
        descriptor model needs ``descriptor``, and ``support`` too when it fine-tunes; a
        description model needs ``descriptions`` (``support`` optional)."""
        support, descriptor = request.get("support"), request.get("descriptor")
        if self.reads_descriptions:
            return self.description_episode(request.get("descriptions"), support)
        if not self.takes_descriptor:
            if support is None or descriptor is not None:
                raise ServiceError("this model reads the task's support set: send 'support' "
                                   "(and no 'descriptor')", 422, "support")
            return self.support_episode(support)
        if descriptor is None:
            raise ServiceError("this model reads a task descriptor: send 'descriptor'", 422,
                               "descriptor")
        if self.model.finetune_steps and support is None:
            raise ServiceError("this model fine-tunes each task: send its 'support' set beside "
                               "the descriptor", 422, "support")
        try:
            value = getattr(self.model.encoder, "parse_descriptor")(descriptor)  # noqa: B009
        except ValueError as err:
            raise ServiceError(str(err), 422, "descriptor") from None
        if isinstance(value, Tensor):
            self._bounded(value, "descriptor")
        if support is None:
            return self.source.descriptor_episode(value)
        return replace(self.support_episode(support), descriptor=value)

    # ------------------------------------------------------------- generation, prediction
    def generate(self, episode: Episode) -> Params:
        """The task's generated (and fine-tuned) parameters; refuses non-finite ones."""
        try:
            with self.model_lock:
                params = self.fast.params(episode)
        except (ValueError, IndexError, RuntimeError) as err:  # bad values: 4xx, never 5xx
            raise ServiceError(" ".join(str(err).split())[:500]) from None
        return params

    def predict(self, params: Params, x: Tensor) -> dict[str, Any]:
        """One task's predictions for inputs ``x``, as the kind's JSON."""
        try:
            with self.model_lock, torch.no_grad():
                out = self.model.target(params, x[None])[0]
        except (ValueError, IndexError, RuntimeError) as err:
            raise ServiceError("the model cannot run on these inputs: "
                               + " ".join(str(err).split())[:400]) from None
        if not bool(torch.isfinite(out).all()):
            raise ServiceError("the model's predictions for these inputs are not finite "
                               "(inputs or support values far outside the training range?)")
        return self.kind.to_json(out)

    def stored(self, task_id: str) -> dict[str, Any]:
        record = self.store.get(task_id)
        if record is None:
            raise ServiceError(f"unknown task id {task_id!r}", 404, "task_id")
        if record["content_id"] != self.content_id:
            raise ServiceError(f"task {task_id} was made by model version "
                               f"{record['content_id'][:12]}; this server runs "
                               f"{self.content_id[:12]}", 409, "task_id")
        return record

    def _cache_put(self, task_id: str, params: Params) -> None:
        with self.cache_lock:
            self.cache[task_id] = params
            self.cache.move_to_end(task_id)
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
                self.cache_stats["evictions"] += 1

    def params_of(self, task_id: str) -> Params:
        """A registered task's parameters: from the cache, else regenerated (deterministic)."""
        with self.cache_lock:
            if task_id in self.cache:
                self.cache.move_to_end(task_id)
                self.cache_stats["hits"] += 1
                return self.cache[task_id]
        record = self.stored(task_id)
        params = self.generate(self.task_episode(record["request"]))
        with self.cache_lock:
            self.cache_stats["misses"] += 1
        self._cache_put(task_id, params)
        if self.store.get(task_id) is None:  # deleted while it was being regenerated
            with self.cache_lock:
                self.cache.pop(task_id, None)
            raise ServiceError(f"unknown task id {task_id!r}", 404, "task_id")
        return params

    # --------------------------------------------------------------------------- actions
    def register(self, request: dict[str, Any]) -> dict[str, Any]:
        params = self.generate(self.task_episode(request))
        task_id = uuid.uuid4().hex
        kind = ("support" if request.get("support") is not None
                else "descriptions" if request.get("descriptions") is not None else "descriptor")
        created = self.store.add(task_id, self.content_id, kind, request)
        self._cache_put(task_id, params)
        return {"task_id": task_id, "content_id": self.content_id, "created": created}

    def describe(self, task_id: str) -> dict[str, Any]:
        record = self.stored(task_id)
        return {k: record[k] for k in ("task_id", "created", "content_id", "kind")}

    def delete(self, task_id: str) -> dict[str, Any]:
        if not self.store.delete(task_id):
            raise ServiceError(f"unknown task id {task_id!r}", 404, "task_id")
        with self.cache_lock:
            self.cache.pop(task_id, None)
        return {"deleted": task_id}

    def predict_task(self, task_id: str, x: Any) -> dict[str, Any]:
        params = self.params_of(task_id)
        return self.predict(params, self.inputs(x))

    @property
    def has_catalogue(self) -> bool:
        """Whether the task family has a catalogue of items to rank (``tasks.movielens``)."""
        return callable(getattr(self.source, "catalogue", None))

    def top_k(self, task_id: str, k: int) -> dict[str, Any]:
        """The ``k`` best-scored catalogue items for a registered task, excluding the items of
        its support set (the ones the user already rated)."""
        if not self.has_catalogue:
            raise ServiceError("this model's tasks have no item catalogue", 400, "task_id")
        params = self.params_of(task_id)
        rated = self.stored(task_id)["request"].get("support") or {}
        seen = {int(i) for i in rated.get("x") or []}
        source: Any = self.source
        catalogue = source.catalogue()
        ids = source.item_ids(catalogue)
        with self.model_lock, torch.no_grad():
            scores = self.model.target(params, catalogue[None])[0].reshape(-1)
        keep = torch.tensor([int(i) not in seen for i in ids.tolist()])
        scores, ids = scores[keep], ids[keep]
        best = torch.topk(scores, min(k, len(scores)))
        return {"items": ids[best.indices].tolist(),
                "scores": [round(float(v), 6) for v in best.values]}

    def predict_once(self, request: dict[str, Any], x: Any) -> dict[str, Any]:
        """Generate from a task request (as ``register`` takes) and predict ``x``, storing
        nothing."""
        inputs = self.inputs(x)
        return self.predict(self.generate(self.task_episode(request)), inputs)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "content_id": self.content_id,
                "method": self.run.config.method, "task_kind": self.kind.name}

    def stats(self) -> dict[str, Any]:
        with self.cache_lock:
            cache = {"size": len(self.cache), "capacity": self.cache_size, **self.cache_stats}
        return {**self.metrics.snapshot(), "cache": cache, "tasks_stored": self.store.count()}
