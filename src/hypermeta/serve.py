"""Serving task adaptation over HTTP (FastAPI): register a task by descriptor or support set,
then predict with its generated network.

Registered tasks live in SQLite (WAL, one file in ``state_dir``) so a restart keeps them;
generated networks live in a bounded LRU cache and are regenerated deterministically from the
stored request when evicted. Each task records the checkpoint content id that made it; a server
running another checkpoint answers such a task with 409.
"""

from __future__ import annotations

import collections
import hmac
import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hypermeta.build import load_learner
from hypermeta.episodes import Episode
from hypermeta.model import HyperModel
from hypermeta.spec import Params

try:
    from fastapi import FastAPI, HTTPException, Request, Response
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("serving needs the 'serve' extra: pip install 'hypermeta[serve]'") from err


class SupportSet(BaseModel):
    x: list[Any]
    y: list[Any]


class TaskRequest(BaseModel):
    descriptor: str | int | list[float] | None = None
    support: SupportSet | None = None


class PredictRequest(BaseModel):
    x: list[Any]


class OneShotRequest(BaseModel):
    support: SupportSet
    x: list[Any]


class _Store:
    """Registered tasks in SQLite (WAL); every write is committed before the reply."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
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


class _Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=10_000))

    def record(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.counts[f"{route} {status}"] += 1
            self.latency[route].append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            latency = {}
            for route, values in self.latency.items():
                arr = np.array(values) * 1000
                latency[route] = {"count": len(arr), "p50_ms": float(np.percentile(arr, 50)),
                                  "p99_ms": float(np.percentile(arr, 99))}
            return {"requests": dict(self.counts), "latency": latency}


def create_app(run_dir: str | Path, *, state_dir: str | Path | None = None,
               cache_size: int = 128, max_body_bytes: int = 1_000_000, max_rows: int = 10_000,
               token: str | None = None, which: str = "best") -> FastAPI:
    """The FastAPI app serving the hypernet run in ``run_dir``.

    Arguments:
        run_dir: a hypernet run made by ``hypermeta train``.
        state_dir: where the SQLite task database lives (default ``run_dir/serve-state``).
        cache_size: generated task networks kept in memory (LRU).
        max_body_bytes: larger request bodies get 413.
        max_rows: most rows in a support set or a prediction batch (else 413).
        token: when set, every route but ``/healthz`` needs ``Authorization: Bearer <token>``.
    """
    if cache_size < 1 or max_body_bytes < 1 or max_rows < 1:
        raise ValueError("cache_size, max_body_bytes and max_rows must be >= 1")
    learner, config, source, content_id = load_learner(run_dir, which=which)
    if not isinstance(learner, HyperModel):
        raise ValueError(f"{run_dir} holds a {config.method} run; serving needs a hypernet run")
    model: HyperModel = learner
    kind, x_shape = source.task_kind, tuple(source.x_shape)
    store = _Store(Path(state_dir or Path(run_dir) / "serve-state") / "tasks.sqlite3")
    metrics = _Metrics()
    cache: collections.OrderedDict[str, Params] = collections.OrderedDict()
    cache_stats = collections.Counter[str]()
    model_lock, cache_lock = threading.Lock(), threading.Lock()
    app = FastAPI(title="hypermeta", version=str(content_id[:12]))

    def bad(message: str, status: int = 422) -> HTTPException:
        return HTTPException(status_code=status, detail=message)

    def array(values: list[Any], name: str, shape: tuple[int, ...], *, integer: bool) -> Tensor:
        if len(values) > max_rows:
            raise bad(f"{name} has {len(values)} rows; the limit is {max_rows}", 413)
        if not values:
            raise bad(f"{name} is empty")
        try:
            data = np.asarray(values, dtype=np.float64)
        except (ValueError, TypeError):
            raise bad(f"{name} must be a rectangular array of numbers") from None
        if data.shape[1:] != shape:
            expected = ", ".join(["N", *map(str, shape)])
            raise bad(f"{name} has shape {list(data.shape)}; expected [{expected}]")
        if not np.isfinite(data).all():
            raise bad(f"{name} contains NaN or Inf")
        if integer:
            if not np.all(data == np.round(data)) or data.min() < 0 or data.max() >= source.out_dim:
                raise bad(f"{name} must hold class labels 0..{source.out_dim - 1}")
            return torch.as_tensor(data, dtype=torch.long)
        return torch.as_tensor(data, dtype=torch.float32)

    def support_episode(support: SupportSet) -> Episode:
        x = array(support.x, "support.x", x_shape, integer=False)
        y_shape = () if kind == "classification" or source.out_dim == 1 else (source.out_dim,)
        y = array(support.y, "support.y", y_shape, integer=kind == "classification")
        if len(x) != len(y):
            raise bad(f"support.x has {len(x)} rows but support.y has {len(y)}")
        return source.support_episode(x, y)

    def task_episode(request: dict[str, Any]) -> Episode:
        if request.get("support") is not None:
            return support_episode(SupportSet(**request["support"]))
        descriptor = request.get("descriptor")
        enc = config.encoder.kind
        value: Tensor | list[str]
        if enc in ("hashed", "text"):
            if not isinstance(descriptor, str):
                raise bad(f"descriptor must be a string for a {enc} encoder")
            value = [descriptor]
        elif enc == "task_id":
            if not isinstance(descriptor, int) or isinstance(descriptor, bool):
                raise bad("descriptor must be an integer task id")
            value = torch.tensor([descriptor])
        elif enc == "features":
            if not isinstance(descriptor, list):
                raise bad("descriptor must be a list of numbers")
            value = array([descriptor], "descriptor", (config.encoder.in_dim or 0,),
                          integer=False)
        else:
            raise bad("this model reads support sets: send 'support', not 'descriptor'")
        return source.descriptor_episode(value)

    def generate(episode: Episode) -> Params:
        try:
            with model_lock:
                return model.adapted_params(episode)
        except ValueError as err:
            raise bad(" ".join(str(err).split())) from None

    def predict(params: Params, x: Tensor) -> dict[str, Any]:
        with model_lock, torch.no_grad():
            out = model.target(params, x[None])[0]
        if kind == "classification":
            return {"predictions": out.argmax(-1).tolist(),
                    "probabilities": torch.softmax(out, -1).tolist()}
        return {"predictions": out.tolist()}

    def stored(task_id: str) -> dict[str, Any]:
        record = store.get(task_id)
        if record is None:
            raise bad(f"unknown task id {task_id!r}", 404)
        if record["content_id"] != content_id:
            raise bad(f"task {task_id} was made by model version {record['content_id'][:12]}; "
                      f"this server runs {content_id[:12]}", 409)
        return record

    def params_of(task_id: str) -> Params:
        with cache_lock:
            if task_id in cache:
                cache.move_to_end(task_id)
                cache_stats["hits"] += 1
                return cache[task_id]
        record = stored(task_id)
        params = generate(task_episode(record["request"]))  # deterministic regeneration
        with cache_lock:
            cache_stats["misses"] += 1
            cache[task_id] = params
            while len(cache) > cache_size:
                cache.popitem(last=False)
                cache_stats["evictions"] += 1
        return params

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        route = request.scope.get("path", "")
        if token is not None and route != "/healthz":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                response: Response = JSONResponse({"detail": "missing or wrong bearer token"},
                                                  status_code=401)
                metrics.record(_route_name(request), 401, time.perf_counter() - started)
                return response
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            response = JSONResponse({"detail": f"request body over {max_body_bytes} bytes"},
                                    status_code=413)
        else:
            body = await request.body()
            if len(body) > max_body_bytes:
                response = JSONResponse({"detail": f"request body over {max_body_bytes} bytes"},
                                        status_code=413)
            else:
                response = await call_next(request)
        metrics.record(_route_name(request), response.status_code, time.perf_counter() - started)
        return response

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "content_id": content_id, "method": config.method,
                "task_kind": kind}

    @app.get("/metrics")
    def metrics_route() -> dict[str, Any]:
        with cache_lock:
            cache_info = {"size": len(cache), "capacity": cache_size, **cache_stats}
        return {**metrics.snapshot(), "cache": cache_info, "tasks_stored": store.count()}

    @app.post("/v1/tasks", status_code=201)
    def register(request: TaskRequest) -> dict[str, Any]:
        if (request.support is None) == (request.descriptor is None):
            raise bad("send exactly one of 'descriptor' or 'support'")
        payload = request.model_dump()
        params = generate(task_episode(payload))
        task_id = uuid.uuid4().hex
        created = store.add(task_id, content_id, "support" if request.support else "descriptor",
                            payload)
        with cache_lock:
            cache[task_id] = params
            while len(cache) > cache_size:
                cache.popitem(last=False)
                cache_stats["evictions"] += 1
        return {"task_id": task_id, "content_id": content_id, "created": created}

    @app.get("/v1/tasks/{task_id}")
    def get_task(task_id: str) -> dict[str, Any]:
        record = stored(task_id)
        return {k: record[k] for k in ("task_id", "created", "content_id", "kind")}

    @app.delete("/v1/tasks/{task_id}")
    def delete_task(task_id: str) -> dict[str, Any]:
        if not store.delete(task_id):
            raise bad(f"unknown task id {task_id!r}", 404)
        with cache_lock:
            cache.pop(task_id, None)
        return {"deleted": task_id}

    @app.post("/v1/tasks/{task_id}/predict")
    def predict_task(task_id: str, request: PredictRequest) -> dict[str, Any]:
        params = params_of(task_id)
        return predict(params, array(request.x, "x", x_shape, integer=False))

    @app.post("/v1/predict")
    def predict_once(request: OneShotRequest) -> dict[str, Any]:
        x = array(request.x, "x", x_shape, integer=False)
        return predict(generate(support_episode(request.support)), x)

    return app


def _route_name(request: Request) -> str:
    path = request.scope.get("path", "")
    if path.startswith("/v1/tasks/"):
        return "/v1/tasks/{id}/predict" if path.endswith("/predict") else "/v1/tasks/{id}"
    return str(path)
