"""HTTP routes (FastAPI) over one ``TaskService``: parse, call, answer; nothing else.

Every error answers with one body shape, ``{"detail": [{"loc": [...], "msg": ..., "type":
...}]}``, and every status a route returns is in the OpenAPI document. A guard in front of the
app checks the bearer token before reading any body, and counts the body while it streams in,
refusing it (413) as soon as it passes the limit.
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Any

from hypermeta.runs import load_hypermodel
from hypermeta.serve.service import ServiceError, TaskService

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("serving needs the 'serve' extra: pip install 'hypermeta[serve]'") from err

Number = StrictFloat | StrictInt


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SupportSet(_Body):
    x: list[Any] = Field(description="support inputs [S, *x_shape], in the task family's "
                         "input format (numbers; integer ids; strings for text)")
    y: list[Any] = Field(description="support labels: class ids [S], or values [S] / "
                         "[S, out_dim]")


class TaskRequest(_Body):
    descriptor: StrictStr | StrictInt | list[Number] | None = Field(
        None, description="task id, label/text, or feature vector (per the model's encoder)")
    support: SupportSet | None = None


class PredictRequest(_Body):
    x: list[Any] = Field(description="inputs [N, *x_shape]")


class OneShotRequest(_Body):
    support: SupportSet
    x: list[Any] = Field(description="inputs [N, *x_shape]")


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """The one error body of every route."""

    detail: list[ErrorItem]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    words = {401: "missing or wrong bearer token", 404: "unknown task id",
             409: "the task was made by another model version", 413: "body or rows over limit",
             422: "invalid input"}
    return {s: {"model": ErrorBody, "description": words[s]} for s in statuses}


def _error(status: int, message: str, loc: list[str | int], kind: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": loc, "msg": message, "type": kind}]},
                        status_code=status)


class _Guard:
    """ASGI middleware: bearer auth before any body is read, a body limit enforced while the
    body streams, and per-route-template metrics (unknown paths share one label)."""

    def __init__(self, app: Any, service: TaskService, *, token: str | None,
                 max_body_bytes: int) -> None:
        self.app, self.service, self.token = app, service, token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.service.metrics.record(label, status["code"], time.perf_counter() - started)

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.token is not None and scope.get("path") != "/healthz":
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                await _error(401, "missing or wrong bearer token", ["header", "authorization"],
                             "auth")(scope, receive, send)
                return
        too_big = _error(413, f"request body over {self.max_body_bytes} bytes", ["body"],
                         "too_large")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await too_big(scope, receive, send)
            return
        chunks, size = [], 0
        while True:  # read the body here, counting as it streams (chunked bodies included)
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await too_big(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            message: dict[str, Any] = await receive()
            return message

        await self.app(scope, replay, send)


def create_app(run_dir: str | Path, *, state_dir: str | Path | None = None,
               cache_size: int = 128, max_body_bytes: int = 1_000_000, max_rows: int = 10_000,
               token: str | None = None, which: str = "best",
               allow_data_change: bool = False) -> Any:
    """The ASGI app serving the hypernet run in ``run_dir`` (FastAPI behind a guard).

    Arguments:
        run_dir: a hypernet run made by ``hypermeta train``.
        state_dir: where the SQLite task database lives (default ``run_dir/serve-state``).
        cache_size: generated task networks kept in memory (LRU).
        max_body_bytes: larger request bodies get 413 (checked while streaming).
        max_rows: most rows in a support set or a prediction batch (else 413).
        token: when set, every route but ``/healthz`` needs ``Authorization: Bearer <token>``;
            an empty or blank token is refused.
        which: the checkpoint, ``best`` or ``last``.
        allow_data_change: serve even if the run's task data changed since training.
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1")
    if token is not None and not token.strip():
        raise ValueError("token is empty or blank: pass a real token, or none (loopback only)")
    run = load_hypermodel(run_dir, which=which, allow_data_change=allow_data_change)
    service = TaskService(run, state_dir=Path(state_dir or Path(run_dir) / "serve-state"),
                          cache_size=cache_size, max_rows=max_rows)
    api = FastAPI(title="hypermeta", version=str(run.content_id[:12]),
                  description="Register a task by descriptor or support set, then predict "
                              "with its generated network.")

    @api.exception_handler(ServiceError)
    async def service_error(request: Request, err: ServiceError) -> JSONResponse:
        return _error(err.status, err.message, ["body", *err.field.split(".")], "invalid")

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        items = [{"loc": [str(p) if not isinstance(p, int) else p for p in e["loc"]],
                  "msg": e["msg"], "type": e["type"]} for e in err.errors()]
        return JSONResponse({"detail": items}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), [], "http")

    @api.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness and the model version (no token needed)."""
        return service.health()

    @api.get("/metrics", responses=_errors(401))
    def metrics() -> dict[str, Any]:
        """Request counts and latency per route, cache and store sizes."""
        return service.stats()

    @api.post("/v1/tasks", status_code=201, responses=_errors(401, 413, 422))
    def register(request: TaskRequest) -> dict[str, Any]:
        """Register a task by its descriptor or its support set."""
        return service.register(request.model_dump())

    @api.get("/v1/tasks/{task_id}", responses=_errors(401, 404, 409))
    def get_task(task_id: str) -> dict[str, Any]:
        """A registered task's record."""
        return service.describe(task_id)

    @api.delete("/v1/tasks/{task_id}", responses=_errors(401, 404))
    def delete_task(task_id: str) -> dict[str, Any]:
        """Forget a registered task."""
        return service.delete(task_id)

    @api.post("/v1/tasks/{task_id}/predict", responses=_errors(401, 404, 409, 413, 422))
    def predict_task(task_id: str, request: PredictRequest) -> dict[str, Any]:
        """Predict with a registered task's generated network."""
        return service.predict_task(task_id, request.x)

    @api.post("/v1/predict", responses=_errors(401, 413, 422))
    def predict_once(request: OneShotRequest) -> dict[str, Any]:
        """Generate from a support set and predict, without registering."""
        return service.predict_once(request.support.model_dump(), request.x)

    return _Guard(api, service, token=token, max_body_bytes=max_body_bytes)
