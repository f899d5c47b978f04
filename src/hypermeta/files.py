"""Files: atomic writes (a temp file in the same folder, fsync, then rename over the destination,
so a reader (or a crash) sees the old file or the new one, never a mix) and the cache folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """``json.dumps(obj, indent=2)`` written atomically (see ``atomic_write_bytes``)."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


__all__ = ["atomic_write_bytes", "atomic_write_json"]


def cache_root() -> Path:
    """Where computed data is cached (embeddings, synthesised audio): ``$HYPERMETA_CACHE`` or
    ``~/.cache/hypermeta``."""
    root = os.environ.get("HYPERMETA_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "hypermeta"
