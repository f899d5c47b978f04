import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from hypermeta import HyperModel
from hypermeta.checkpoint import CheckpointError, load_checkpoint
from hypermeta.config import ConfigError, RunConfig
from hypermeta.runs import load
from hypermeta.train import fit


def sinusoid_config(method="hypernet", steps=40, **train):
    return RunConfig.from_dict({
        "method": method, "seed": 1,
        "tasks": {"name": "sinusoid", "shots": 5, "queries": 5},
        "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [16, 16]},
        "encoder": {"kind": "set", "dim": 16, "hidden": 32},
        "hypernet": {"hidden": [32]},
        "train": {"steps": steps, "meta_batch": 8, "val_every": 20, "val_tasks": 20,
                  "log_every": 1, "lr": 3e-3, **train},
        "scratch": {"steps": 5},
        "maml": {"test_inner_steps": 2},
    })


def losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def test_resume_continues_exactly(tmp_path):
    config = sinusoid_config(steps=40)
    whole = fit(config, tmp_path / "whole")
    first = fit(config, tmp_path / "parts", max_steps=25)
    assert first.steps_done == 25 and not first.complete
    second = fit(config, tmp_path / "parts")
    assert second.steps_done == 40 and second.complete
    assert losses(tmp_path / "parts") == losses(tmp_path / "whole")
    assert second.content_id == whole.content_id


def test_a_wall_clock_limit_stops_at_a_checkpoint_and_resumes_exactly(tmp_path):
    config = sinusoid_config(steps=30)
    whole = fit(config, tmp_path / "whole")
    chunks = []
    while not chunks or not chunks[-1].complete:  # a limit every step outlives: one step each
        chunks.append(fit(config, tmp_path / "parts", max_seconds=1e-6))
        assert len(chunks) <= 30
    assert [c.steps_done for c in chunks] == list(range(1, 31))
    assert losses(tmp_path / "parts") == losses(tmp_path / "whole")
    assert chunks[-1].content_id == whole.content_id
    for bad in (0, -1.0, True):
        with pytest.raises(ValueError, match="max_seconds must be > 0"):
            fit(config, tmp_path / "bad", max_seconds=bad)
    assert not (tmp_path / "bad").exists()


def test_a_different_config_in_the_same_folder_is_refused(tmp_path):
    fit(sinusoid_config(steps=2), tmp_path / "run")
    with pytest.raises(ConfigError, match="different config"):
        fit(sinusoid_config(steps=3), tmp_path / "run")


def test_a_run_saved_before_a_config_field_existed_still_resumes(tmp_path):
    config = sinusoid_config(steps=30)
    fit(config, tmp_path, max_steps=10)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["class_head"]  # as written by a version without that section
    saved["gates"].pop("mode")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert fit(config, tmp_path).steps_done == 30
    saved["seed"] = 5  # a real difference is still refused
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="different config"):
        fit(config, tmp_path)


@pytest.mark.parametrize("method", ["hypernet", "maml", "fomaml"])
def test_smoke_training_lowers_the_loss(tmp_path, method):
    config = sinusoid_config(method, steps=300, val_every=300, lr=1e-2)
    fit(config, tmp_path / method)
    values = losses(tmp_path / method)
    assert np.mean(values[-30:]) < 0.85 * np.mean(values[:30]), (values[:5], values[-5:])


def test_scratch_has_nothing_to_meta_train_but_evaluates(tmp_path):
    from hypermeta.evaluate import evaluate
    from hypermeta.runs import load_run

    result = fit(sinusoid_config("scratch"), tmp_path / "s")
    assert result.steps_done == 0 and result.complete
    loaded = load_run(tmp_path / "s")
    learner, tasks = loaded.learner, loaded.tasks
    test = tasks.fixed_tasks("test", 20)
    trained = evaluate(learner.predict, test, "regression")["mean"]
    learner.steps = 0  # no training at all is worse than 5 Adam steps on the support set
    assert trained < evaluate(learner.predict, test, "regression")["mean"]


def test_protonet_training_on_blobs_beats_chance(tmp_path, monkeypatch):
    from hypermeta import runs
    from hypermeta.evaluate import evaluate
    from hypermeta.tasks import LabeledArrayTasks

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 8)) * 2
    x = np.repeat(centers, 10, axis=0) + rng.normal(size=(400, 8))
    tasks = LabeledArrayTasks(x, np.repeat(np.arange(40), 10), ways=5, shots=1, queries=4,
                              fractions=(0.5, 0.25, 0.25))
    monkeypatch.setattr(runs, "build_tasks", lambda config: tasks)
    monkeypatch.setattr("hypermeta.train.build_tasks", lambda config: tasks)
    config = RunConfig.from_dict({
        "method": "protonet", "target": {"name": "mlp", "in_dim": 8, "out_dim": 16,
                                         "hidden": [32]},
        "train": {"steps": 60, "meta_batch": 4, "val_every": 30, "val_tasks": 50}})
    fit(config, tmp_path / "p")
    learner = runs.load(tmp_path / "p")
    accuracy = evaluate(learner.predict, tasks.fixed_tasks("test", 100), "classification")
    assert accuracy["mean"] > 0.5  # chance is 0.2


def test_pretraining_gives_a_better_start(tmp_path):
    plain = fit(sinusoid_config(steps=5, val_every=5), tmp_path / "plain")
    pre = fit(sinusoid_config(steps=5, val_every=5, pretrain_steps=200), tmp_path / "pre")
    assert pre.best_val < plain.best_val
    with pytest.raises(ConfigError, match="pre-training applies to hypernet and MAML"):
        fit(sinusoid_config("scratch", pretrain_steps=5), tmp_path / "s")


def test_early_stopping_keeps_the_best_checkpoint(tmp_path):
    # a vanishing learning rate: nothing improves by min_delta after the first validation
    config = sinusoid_config(steps=200, val_every=10, patience=2, lr=1e-12, min_delta=1e-3)
    result = fit(config, tmp_path / "run")
    assert result.stopped_early and result.complete and result.steps_done == 30
    assert result.best_step == 10
    _, _, meta = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert meta["state"]["trainer"]["best_step"] == result.best_step


def test_truncated_or_corrupted_checkpoint_gives_a_clear_error(tmp_path):
    fit(sinusoid_config(steps=2), tmp_path / "run")
    path = tmp_path / "run" / "last.safetensors"
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(tmp_path / "cut.safetensors")
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + header_len])
    start, _ = header["model/hypernet.head.weight"]["data_offsets"]
    flipped = bytearray(data)
    flipped[8 + header_len + start + 3] ^= 0xFF  # one byte of a model weight
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="content id"):
        load_checkpoint(tmp_path / "flip.safetensors")


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    config = sinusoid_config(steps=20)
    fit(config, tmp_path / "run", max_steps=10)
    path = tmp_path / "run" / "last.safetensors"
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        fit(config, tmp_path / "run")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    assert fit(config, tmp_path / "run").steps_done == 20


def test_hypermodel_load_rebuilds_builtin_and_custom_targets(tmp_path):
    config = sinusoid_config(steps=2)
    fit(config, tmp_path / "run")
    model = load(tmp_path / "run")
    assert isinstance(model, HyperModel)
    custom = RunConfig.from_dict({**config.model_dump(), "target": {"name": "custom"}})
    net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 1))
    fit(custom, tmp_path / "custom", target=net)
    with pytest.raises(ConfigError, match="pass it as target="):
        load(tmp_path / "custom")
    loaded = load(tmp_path / "custom", target=net)
    weights, _, _ = load_checkpoint(tmp_path / "custom" / "best.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in loaded.state_dict().items())


def test_content_id_covers_scalar_and_integer_tensors():
    from hypermeta.checkpoint import content_id

    weights = {"bn.num_batches_tracked": torch.tensor(3), "w": torch.ones(2, 2)}
    first = content_id("{}", weights)
    weights["bn.num_batches_tracked"] = torch.tensor(4)
    assert content_id("{}", weights) != first


def test_a_cuda_device_that_is_not_there_is_refused_before_any_write(tmp_path):
    # on a machine with CUDA, ask for one device past the last
    bad = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    config = sinusoid_config(steps=2).model_copy(update={"device": bad})
    with pytest.raises(ValueError, match="CUDA|does not exist"):
        fit(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="device"):
        RunConfig.from_dict({"device": "gpu"})
