"""Checkpoints (safetensors + JSON metadata, content ids), written atomically
(``hypermeta.files``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from hypermeta.files import atomic_write_bytes as atomic_write_bytes  # re-exported
from hypermeta.files import atomic_write_json as atomic_write_json  # re-exported

# ----------------------------------------------------------------------------- checkpoints
FORMAT = "hypermeta-checkpoint/2"
READABLE = ("hypermeta-checkpoint/1", FORMAT)  # /1 (hypermeta 0.1.0) had no state digest


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or from another format."""


def content_id(config_json: str, weights: dict[str, Tensor]) -> str:
    """sha256 over the config JSON and every weight (sorted by name): the model version."""
    digest = hashlib.sha256(config_json.encode())
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(list(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel()
                      else b"")
    return digest.hexdigest()


def state_digest(extra: dict[str, Tensor], state_json: str) -> str:
    """sha256 over everything a resume reads besides the weights: the extra tensors
    (optimizer moments, RNG states) and the training state JSON (step, best value, scheduler)."""
    return content_id(state_json, extra)


def save_checkpoint(path: str | Path, *, config_json: str, model: dict[str, Tensor],
                    extra_tensors: dict[str, Tensor] | None = None,
                    state: dict[str, Any] | None = None) -> str:
    """One safetensors file: model weights (``model/...``), extra tensors (optimizer, RNG),
    and JSON metadata (config, training state, content id). Written atomically: a crash
    leaves the previous file intact. Returns the content id."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.items()}
    cid = content_id(config_json, weights)
    tensors = {f"model/{k}": v for k, v in weights.items()}
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra/{k}"] = v.detach().cpu().contiguous()
    extra = {k: v.detach().cpu().contiguous() for k, v in (extra_tensors or {}).items()}
    state_json = json.dumps(state or {})
    metadata = {"format": FORMAT, "config": config_json, "content_id": cid,
                "state": state_json, "state_digest": state_digest(extra, FORMAT + state_json)}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))
    return cid


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor],
                                               dict[str, Any]]:
    """-> (model weights, extra tensors, metadata with parsed ``config`` and ``state``).

    Never unpickles. Verifies the content id, so a flipped byte in the weights is caught.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({err})") from None
    if metadata.get("format") not in READABLE:
        raise CheckpointError(f"{path} is not a hypermeta checkpoint this version reads (format "
                              f"{metadata.get('format')!r}; readable: {list(READABLE)})")
    missing = [k for k in ("config", "content_id", "state") if k not in metadata]
    if missing:
        raise CheckpointError(f"checkpoint {path} is corrupted: its metadata lacks {missing}")
    model = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    extra = {k.removeprefix("extra/"): v for k, v in tensors.items() if k.startswith("extra/")}
    if content_id(metadata["config"], model) != metadata.get("content_id"):
        raise CheckpointError(f"checkpoint {path} is corrupted: its weights do not match "
                              "its content id")
    # every format but /1 carries a state digest over (format + state JSON, extra tensors);
    # a /1 file with a digest is a /2 file whose format was edited
    if metadata["format"] != "hypermeta-checkpoint/1" or "state_digest" in metadata:
        stored = metadata.get("state_digest")
        expected = state_digest(extra, metadata["format"] + metadata["state"])
        # early /2 files digested the state alone; accepting that for /2 opens no hole (an
        # edited format changes the first digest and is never /2 with the second)
        early = metadata["format"] == FORMAT and stored == state_digest(extra,
                                                                          metadata["state"])
        if stored != expected and not early:
            raise CheckpointError(f"checkpoint {path} is corrupted: its optimizer, RNG or "
                                  "training state (or its format) does not match its state "
                                  "digest (resuming would diverge)")
    try:
        meta: dict[str, Any] = {"config": json.loads(metadata["config"]),
                                "state": json.loads(metadata["state"]),
                                "content_id": metadata["content_id"],
                                "format": metadata["format"]}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path} is corrupted: unreadable metadata ({err})") \
            from None
    return model, extra, meta


# ------------------------------------------------------------------------------ optimizers
def optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer's state as (tensors for ``extra_tensors``, JSON for ``state``): a
    safetensors checkpoint holds no pickled objects. ``restore_optimizer`` is the inverse."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().cpu()
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, extra: dict[str, Tensor],
                       saved: dict[str, Any]) -> None:
    """Load what ``optimizer_tensors`` saved (``extra`` tensors, ``saved`` JSON) into
    ``optimizer``."""
    entries: dict[int, dict[str, Any]] = {}
    for name, value in extra.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            entries.setdefault(int(index), {})[key] = value
    for name, value in saved["scalars"].items():
        index, key = name.split("/", 1)
        entries.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": entries, "param_groups": saved["param_groups"]})
