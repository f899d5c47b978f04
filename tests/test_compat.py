"""Checkpoints of hypermeta 0.1.0 load and give the same numbers; unreadable formats and
tampered resume state are refused with messages naming what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch

import hypermeta
from hypermeta.checkpoint import CheckpointError, load_checkpoint

V1_RUN = Path(__file__).parent / "data" / "v1-sinusoid"
# `hypermeta eval RUN --tasks 20` with hypermeta 0.1.0 (commit 6aa49c5) on this checkpoint
V1_TEST_MSE_20 = 3.3959898948669434


SMALL = {"tasks": {"name": "sinusoid", "shots": 5},
         "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [8]},
         "encoder": {"kind": "set", "dim": 8, "hidden": 8}, "hypernet": {"hidden": [8]},
         "train": {"steps": 4, "meta_batch": 2, "val_every": 2, "val_tasks": 4}}


def small_run(tmp_path, max_steps=None):
    """A tiny sinusoid run; returns its last checkpoint."""
    hypermeta.fit(hypermeta.RunConfig.from_dict(SMALL), tmp_path / "run", max_steps=max_steps)
    return tmp_path / "run" / "last.safetensors"


def test_a_v1_checkpoint_loads_and_evaluates_as_before(tmp_path):
    run = hypermeta.load_run(V1_RUN)
    assert isinstance(run.learner, hypermeta.HyperModel) and run.config.version == 2
    result = hypermeta.evaluate(run.learner, run.tasks.fixed_tasks("test", 20), run.tasks.kind)
    assert result["mean"] == pytest.approx(V1_TEST_MSE_20, rel=1e-5)


def test_an_unknown_checkpoint_format_names_the_versions_it_reads(tmp_path):
    tensors = safetensors.torch.load_file(V1_RUN / "best.safetensors")
    with safetensors.safe_open(str(V1_RUN / "best.safetensors"), "pt") as handle:
        metadata = dict(handle.metadata())
    metadata["format"] = "hypermeta-checkpoint/9"
    path = tmp_path / "best.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"format 'hypermeta-checkpoint/9'; readable: "
                       r"\['hypermeta-checkpoint/1', 'hypermeta-checkpoint/2'\]"):
        load_checkpoint(path)


def test_a_flipped_byte_in_the_optimizer_state_is_refused(tmp_path):
    last = small_run(tmp_path, max_steps=2)
    load_checkpoint(last)  # intact: loads
    with safetensors.safe_open(str(last), "pt") as handle:
        metadata = dict(handle.metadata())
    tensors = safetensors.torch.load_file(last)
    moment = next(k for k in tensors if k.startswith("extra/optim/"))
    tensors[moment] = tensors[moment].clone()
    tensors[moment].view(-1)[0] += 1.0  # what a flipped byte does to one Adam moment
    safetensors.torch.save_file(tensors, str(last), metadata=metadata)
    with pytest.raises(CheckpointError, match="optimizer, RNG or training state"):
        load_checkpoint(last)
    with pytest.raises(CheckpointError):
        hypermeta.fit(hypermeta.RunConfig.from_dict(SMALL), tmp_path / "run")  # resume too
    # the training state JSON (step counter, best value) is covered as well
    shutil.copy(tmp_path / "run" / "best.safetensors", last)
    with safetensors.safe_open(str(last), "pt") as handle:
        metadata = dict(handle.metadata())
    state = json.loads(metadata["state"])
    state["trainer"]["step"] += 1
    metadata["state"] = json.dumps(state)
    safetensors.torch.save_file(safetensors.torch.load_file(last), str(last), metadata=metadata)
    with pytest.raises(CheckpointError, match="state digest"):
        load_checkpoint(last)


def test_editing_the_format_does_not_skip_the_state_digest(tmp_path):
    last = small_run(tmp_path)
    with safetensors.safe_open(str(last), "pt") as handle:
        metadata = dict(handle.metadata())
    metadata["format"] = "hypermeta-checkpoint/1"  # pretend to be a digest-less old file
    safetensors.torch.save_file(safetensors.torch.load_file(last), str(last), metadata=metadata)
    with pytest.raises(CheckpointError, match="or its format"):
        load_checkpoint(last)


def test_early_format_2_files_with_a_state_only_digest_still_load(tmp_path):
    from hypermeta.checkpoint import state_digest

    last = small_run(tmp_path)
    tensors = safetensors.torch.load_file(last)
    with safetensors.safe_open(str(last), "pt") as handle:
        metadata = dict(handle.metadata())
    extra = {k.removeprefix("extra/"): v for k, v in tensors.items() if k.startswith("extra/")}
    metadata["state_digest"] = state_digest(extra, metadata["state"])  # the early /2 form
    safetensors.torch.save_file(tensors, str(last), metadata=metadata)
    load_checkpoint(last)
    metadata["format"] = "hypermeta-checkpoint/1"  # and that form cannot hide a format edit
    safetensors.torch.save_file(tensors, str(last), metadata=metadata)
    with pytest.raises(CheckpointError, match="or its format"):
        load_checkpoint(last)
