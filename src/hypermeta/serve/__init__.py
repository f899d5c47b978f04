"""Serving task adaptation over HTTP: ``create_app(run_dir)`` (routes in ``app.py``, the work in
``service.py``). Needs the ``serve`` extra."""

from hypermeta.serve.app import create_app
from hypermeta.serve.service import ServiceError, TaskService

__all__ = ["ServiceError", "TaskService", "create_app"]
