"""HTTP routes (FastAPI) over one ``TaskService``: parse, call, answer; nothing else.

Every error answers with one body shape, ``{"detail": [{"loc": [...], "msg": ..., "type":
...}]}``, and every status a route returns is in the OpenAPI document. A guard in front of the
app checks the bearer token before reading any body, and counts the body while it streams in,
refusing it (413) as soon as it passes the limit.
"""

# (no ``from __future__ import annotations``: the request models are built per run, and the
# route functions' annotations must be those objects, not strings)
import hmac
import os
import time
from pathlib import Path
from typing import Annotated, Any

from hypermeta.runs import load_hypermodel
from hypermeta.serve.service import ServiceError, TaskService, store_path
from hypermeta.tasks.inputs import label_schema, rows

try:
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute
    from pydantic import BaseModel, ConfigDict, create_model
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("serving needs the 'serve' extra: pip install 'hypermeta[serve]'") from err

_STRICT = ConfigDict(extra="forbid")
WORKER = str(os.getpid()).encode()


def request_models(service: TaskService) -> tuple[Any, Any, Any]:
    """``(TaskRequest, PredictRequest, OneShotRequest)`` for this run, exact to its task
    family and encoder: the input shape and format, the label form, the descriptor the encoder
    takes, and which of ``support`` / ``descriptor`` a task needs — so the OpenAPI document
    says precisely what the routes accept."""
    limit = service.max_abs_value
    x_item = service.input_format.schema(service.source, limit)
    shape = list(service.source.x_shape)
    support = create_model(
        "SupportSet", __config__=_STRICT,
        x=(rows(x_item, f"support inputs, one example of shape {shape} per row"), ...),
        y=(label_schema(service.source, limit), ...))
    fields: dict[str, Any] = {"support": (support, ...)}
    schema = getattr(service.model.encoder, "descriptor_schema", lambda limit: None)(limit)
    if schema is not None:  # a descriptor model; the support set only for fine-tuning
        fields = {"descriptor": (schema, ...),
                  "support": (support, ...) if service.model.finetune_steps
                  else (support | None, None)}
    if service.reads_descriptions:  # zero-shot: a description per class, examples optional
        fields = {"descriptions": (rows(x_item, "one description per class (class i = label "
                                          "i), in the model's input format"), ...),
                  "support": (support | None, None)}
    task = create_model("TaskRequest", __config__=_STRICT, **fields)
    queries = rows(x_item, f"inputs, one example of shape {shape} per row")
    predict = create_model("PredictRequest", __config__=_STRICT, x=(queries, ...))
    one_shot = create_model("OneShotRequest", __config__=_STRICT, x=(queries, ...), **fields)
    return task, predict, one_shot


def _wav_routes(api: "FastAPI", service: TaskService, auth: tuple[int, ...]) -> None:
    """Multipart uploads of WAV files for audio models (the JSON routes take them as base64
    strings): the files are base64-encoded and go through exactly the JSON routes' path, so
    the checks, limits and the stored request are the same."""
    import base64

    try:
        from fastapi import File, Form, UploadFile
    except ImportError:  # pragma: no cover
        return
    import importlib.util

    if importlib.util.find_spec("python_multipart") is None:  # pragma: no cover
        return  # FastAPI's form parser; the 'serve' extra installs it

    def encoded(files: list[UploadFile]) -> list[str]:
        return [base64.b64encode(f.file.read()).decode() for f in files]

    @api.post("/v1/tasks/wav", status_code=201, responses=_errors(400, *auth, 413, 422))
    def register_wav(
            files: Annotated[list[UploadFile], File(description="support WAVs")],
            y: Annotated[str, Form(description="their labels: comma-separated class ids, in "
                                               "file order")]) -> dict[str, Any]:
        """Register a task from uploaded WAV files (multipart ``files`` + ``y``)."""
        try:
            labels = [int(v) for v in y.split(",")]
        except ValueError:
            raise ServiceError("y must be comma-separated integer class ids", field="y") \
                from None
        return service.register({"support": {"x": encoded(files), "y": labels}})

    @api.post("/v1/tasks/{task_id}/predict/wav", responses=_errors(400, *auth, 404, 409, 413,
                                                                   422))
    def predict_wav(task_id: str, files: Annotated[list[UploadFile], File(
            description="WAVs to classify")]) -> dict[str, Any]:
        """Predict uploaded WAV files (multipart ``files``) with a registered task."""
        return service.predict_task(task_id, encoded(files))


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """The one error body of every route."""

    detail: list[ErrorItem]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    words = {400: "the body cannot be read (not UTF-8 text)", 401: "missing or wrong bearer token",
             404: "unknown task id",
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
                # which worker process answered (several with `serve --workers N`)
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-hypermeta-worker", WORKER)]}
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
               store_url: str | None = None,
               cache_size: int = 128, max_body_bytes: int = 1_000_000, max_rows: int = 10_000,
               token: str | None = None, which: str = "best",
               allow_data_change: bool = False, max_abs_value: float = 1e6) -> Any:
    """The ASGI app serving the hypernet run in ``run_dir`` (FastAPI behind a guard).

    Arguments:
        run_dir: a hypernet run made by ``hypermeta train``.
        state_dir: where the SQLite task database lives (default ``run_dir/serve-state``).
        store_url: the task database as a URL instead, ``sqlite:///path.db`` (several servers
            on one machine may share it; other schemes are refused).
        cache_size: generated task networks kept in memory (LRU).
        max_body_bytes: larger request bodies get 413 (checked while streaming).
        max_rows: most rows in a support set or a prediction batch (else 413).
        token: when set, every route but ``/healthz`` needs ``Authorization: Bearer <token>``;
            an empty or blank token is refused.
        which: the checkpoint, ``best`` or ``last``.
        allow_data_change: serve even if the run's task data changed since training.
        max_abs_value: largest magnitude of a numeric request value (in the OpenAPI schema
            too); far beyond any training range, it keeps the model's arithmetic finite.
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1")
    if token is not None and not token.strip():
        raise ValueError("token is empty or blank: pass a real token, or none (loopback only)")
    if state_dir is not None and store_url is not None:
        raise ValueError("give state_dir or store_url, not both")
    store_file = None if store_url is None else store_path(store_url)
    state_home = None if store_file is not None else Path(state_dir or Path(run_dir) /
                                                          "serve-state")
    run = load_hypermodel(run_dir, which=which, allow_data_change=allow_data_change)
    service = TaskService(run, state_dir=state_home, store_file=store_file,
                          cache_size=cache_size, max_rows=max_rows,
                          max_abs_value=max_abs_value)
    api = FastAPI(title="hypermeta", version=str(run.content_id[:12]),
                  description="Register a task by descriptor or support set, then predict "
                              "with its generated network.")

    @api.exception_handler(ServiceError)
    async def service_error(request: Request, err: ServiceError) -> JSONResponse:
        return _error(err.status, err.message, ["body", *err.field.split(".")], "invalid")

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # pydantic names union branches in loc, some as long validator reprs: keep the path
        items = [{"loc": [p if isinstance(p, int) else str(p) for p in e["loc"]
                          if isinstance(p, int) or not set("[(<") & set(str(p))],
                  "msg": e["msg"], "type": e["type"]} for e in err.errors()]
        return JSONResponse({"detail": items}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        response = _error(err.status_code, str(err.detail), [], "http")
        response.headers.update(err.headers or {})
        if err.status_code == 405:  # Allow: the methods of every route on this path
            path = request.url.path
            methods = {m for route in api.routes if isinstance(route, APIRoute)
                       and route.path_regex.match(path) for m in route.methods or ()}
            response.headers["allow"] = ", ".join(sorted(methods))
        return response

    TaskRequest, PredictRequest, OneShotRequest = request_models(service)
    auth = (401,) if token is not None else ()  # the statuses each route can return

    @api.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness and the model version (no token needed)."""
        return service.health()

    @api.get("/metrics", responses=_errors(*auth))
    def metrics() -> dict[str, Any]:
        """Request counts and latency per route, cache and store sizes."""
        return service.stats()

    @api.post("/v1/tasks", status_code=201, responses=_errors(400, *auth, 413, 422))
    def register(request: TaskRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        """Register a task by its support set, or by its descriptor where the encoder takes one
        (with its support set too when the model fine-tunes)."""
        return service.register(request.model_dump())  # type: ignore[attr-defined]

    @api.get("/v1/tasks/{task_id}", responses=_errors(*auth, 404, 409))
    def get_task(task_id: str) -> dict[str, Any]:
        """A registered task's record."""
        return service.describe(task_id)

    @api.delete("/v1/tasks/{task_id}", responses=_errors(*auth, 404))
    def delete_task(task_id: str) -> dict[str, Any]:
        """Forget a registered task."""
        return service.delete(task_id)

    @api.post("/v1/tasks/{task_id}/predict", responses=_errors(400, *auth, 404, 409, 413, 422))
    def predict_task(task_id: str, request: PredictRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        """Predict with a registered task's generated network."""
        return service.predict_task(task_id, request.x)  # type: ignore[attr-defined]

    @api.post("/v1/predict", responses=_errors(400, *auth, 413, 422))
    def predict_once(request: OneShotRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        """Generate a task's network (as registration would) and predict, storing nothing."""
        return service.predict_once(request.model_dump(), request.x)  # type: ignore[attr-defined]

    if service.has_catalogue:
        @api.get("/v1/tasks/{task_id}/top", responses=_errors(400, *auth, 404, 409, 422))
        def top_items(task_id: str, k: Annotated[int, Query(ge=1, le=10_000)] = 10
                      ) -> dict[str, Any]:
            """The k best-scored catalogue items for a registered task (a user), excluding
            the items of its support set."""
            return service.top_k(task_id, k)

    if service.source.input_format == "audio" and not service.takes_descriptor:
        _wav_routes(api, service, auth)
    return _Guard(api, service, token=token, max_body_bytes=max_body_bytes)


SETTINGS_ENV = "HYPERMETA_SERVE_SETTINGS"


def app_from_env() -> Any:
    """``create_app`` with the keyword arguments in ``$HYPERMETA_SERVE_SETTINGS`` (JSON): the
    factory each worker process of ``hypermeta serve --workers N`` calls. The workers share
    the SQLite task store (WAL); each keeps its own cache, and a task registered through one
    is served by every other (a cache miss regenerates it from the stored request)."""
    import json

    settings = json.loads(os.environ[SETTINGS_ENV])
    return create_app(**settings)
