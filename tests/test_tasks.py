import numpy as np
import pytest
import torch

from hypermeta.tasks import LabeledArrayTasks, LinearTasks, SinusoidTasks, get_tasks, split_seed


def blobs(num_classes=30, per_class=12, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim)) * 3
    x = np.repeat(centers, per_class, axis=0) + rng.normal(size=(num_classes * per_class, dim))
    return x.astype(np.float32), np.repeat(np.arange(num_classes), per_class)


def test_sinusoid_follows_the_maml_protocol():
    tasks = SinusoidTasks(shots=5)
    ep = tasks.sample("train", 2000, torch.Generator().manual_seed(0))
    amplitude, phase = ep.descriptor[:, 0], ep.descriptor[:, 1]
    assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0
    assert phase.min() >= 0 and phase.max() <= torch.pi
    assert ep.support_x.min() >= -5 and ep.support_x.max() <= 5
    expected = amplitude[:, None, None] * torch.sin(ep.query_x - phase[:, None, None])
    torch.testing.assert_close(ep.query_y, expected)
    assert ep.support_x.shape == (2000, 5, 1) and ep.query_x.shape == (2000, 10, 1)


def test_fixed_sets_are_fixed_sized_and_independent_of_training():
    tasks = get_tasks("sinusoid", shots=10)
    test, again = tasks.fixed_tasks("test"), SinusoidTasks(shots=10).fixed_tasks("test")
    assert test.num_tasks == 1000 and test.query_x.shape[1] == 100
    assert torch.equal(test.query_x, again.query_x)
    val = tasks.fixed_tasks("val")
    assert val.num_tasks == 200
    assert not torch.equal(val.descriptor[:5], test.descriptor[:5])
    assert split_seed("sinusoid", "test") != split_seed("sinusoid", "val")
    train = tasks.sample("train", 1000, torch.Generator().manual_seed(split_seed("x", "y")))
    assert not torch.equal(train.descriptor[:5], test.descriptor[:5])
    with pytest.raises(ValueError, match="'val' and 'test'"):
        tasks.fixed_tasks("train")


def test_sampler_is_deterministic_given_the_generator():
    for tasks in (SinusoidTasks(shots=5), LinearTasks(),
                  LabeledArrayTasks(*blobs(), ways=5, shots=1, queries=5)):
        a = tasks.sample("train", 4, torch.Generator().manual_seed(3))
        b = tasks.sample("train", 4, torch.Generator().manual_seed(3))
        c = tasks.sample("train", 4, torch.Generator().manual_seed(4))
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
        assert not torch.equal(a.support_x, c.support_x)


def test_array_tasks_split_classes_disjointly_and_never_leak():
    x, y = blobs()
    tasks = LabeledArrayTasks(x, y, ways=5, shots=2, queries=3)
    splits = {s: set(tasks.classes[s]) for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"]
                or splits["val"] & splits["test"])
    assert set().union(*splits.values()) == set(range(30))
    # map every sampled row back to its original class
    row_class = {tuple(np.round(r, 5)): c for r, c in zip(x, y)}
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val", "test"):
        ep = tasks.sample(split, 20, gen)
        seen = {row_class[tuple(np.round(r, 5))] for r in ep.support_x.reshape(-1, 4).numpy()}
        assert seen <= splits[split]


def test_array_episode_shapes_and_relabelling():
    tasks = LabeledArrayTasks(*blobs(), ways=5, shots=2, queries=3)
    ep = tasks.sample("train", 4, torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (4, 10, 4) and ep.query_x.shape == (4, 15, 4)
    assert ep.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.problems() == []
    assert tasks.fixed_tasks("test").num_tasks == 600


def test_array_tasks_reject_bad_input():
    x, y = blobs()
    with pytest.raises(ValueError, match="fewer than ways=20"):
        LabeledArrayTasks(x, y, ways=20)
    with pytest.raises(ValueError, match="fewer than shots"):
        LabeledArrayTasks(x, y, ways=2, shots=10, queries=10)
    with pytest.raises(ValueError, match="integer labels"):
        LabeledArrayTasks(x, y.astype(float))
    with pytest.raises(ValueError, match="overlap"):
        LabeledArrayTasks(x, y, ways=2, classes={"train": [0, 1, 2], "val": [2, 3],
                                                 "test": [4, 5]})
    with pytest.raises(ValueError, match="unknown task family"):
        get_tasks("sinusoidd")
