"""The per-class generated head: ProtoNet at the start, any way count, batched equals per task,
materialised equals in-memory, clear errors, and an end-to-end run on synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hypermeta import ClassHead, Conv4, Episode, FunctionalTarget, HyperModel
from hypermeta.baselines import ProtoNet
from hypermeta.tasks import TASK_FAMILIES, LabeledArrayTasks

DATA = os.environ.get("HYPERMETA_DATA")
HAS_OMNIGLOT = DATA is not None and (Path(DATA) / "omniglot" / "omniglot.npz").is_file()


def synthetic_images(classes: int = 40, per_class: int = 10, size: int = 16,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each class a random dot template; examples shifted by up to a pixel, 5% of pixels
    flipped."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        template = rng.random((size, size)) > 0.75
        for _ in range(per_class):
            dx, dy = rng.integers(-1, 2, size=2)
            image = np.roll(template, (dx, dy), axis=(0, 1))
            image = image ^ (rng.random((size, size)) < 0.05)
            xs.append(image.astype(np.uint8) * 255)
            ys.append(c)
    return np.stack(xs)[:, None], np.array(ys)


def image_tasks(ways: int = 5, shots: int = 1, queries: int = 3) -> LabeledArrayTasks:
    x, y = synthetic_images()
    return LabeledArrayTasks(x, y, ways=ways, shots=shots, queries=queries,
                             fractions=(0.5, 0.25, 0.25), name="synthetic", x_scale=1 / 255)


def head_model(generate: str | list[str] = "none", batchnorm: str = "batch") -> HyperModel:
    torch.manual_seed(0)
    net = Conv4(in_channels=1, num_classes=5, hidden=8, image_size=16)
    target = FunctionalTarget(net, generate=generate, class_head="head", batchnorm=batchnorm)
    if len(target.spec) == 0:
        return HyperModel(None, None, target, kind="classification",
                          class_head=ClassHead(target.feature_dim, 16))
    from hypermeta import MLPHyperNet, SetEncoder

    encoder = SetEncoder(16 * 16, 10, 8, hidden=16, num_classes=10)
    return HyperModel(encoder, MLPHyperNet(target.spec, 8, hidden=(16,)), target,
                      kind="classification", class_head=ClassHead(target.feature_dim, 16))


def test_class_head_starts_as_the_protonet_head():
    head = ClassHead(6)
    features = torch.randn(2, 10, 6)
    labels = torch.arange(5).repeat(2, 2)
    weight, bias = head(features, labels, ways=5)
    queries = torch.randn(2, 7, 6)
    logits = queries @ weight.transpose(1, 2) + bias[:, None]
    prototypes = torch.stack([features[:, labels[0] == c].mean(1) for c in range(5)], dim=1)
    protonet = -torch.cdist(queries, prototypes) ** 2
    # equal up to a per-query constant (|q|^2), so equal after softmax
    torch.testing.assert_close(logits.softmax(-1), protonet.softmax(-1), atol=1e-5, rtol=1e-4)


def test_the_model_equals_protonet_at_initialisation_with_the_same_backbone():
    model = head_model(batchnorm="frozen").eval().double()
    proto = ProtoNet(torch.nn.Sequential(model.target.module.features, torch.nn.Flatten()))
    proto.eval()  # running statistics, as the frozen target uses
    episode = image_tasks().fixed_tasks("test", 4)
    episode = Episode(episode.support_x.double(), episode.support_y, episode.query_x.double(),
                      episode.query_y)
    torch.testing.assert_close(model.predict(episode).softmax(-1),
                               proto.predict(episode).softmax(-1))


def test_one_model_serves_any_number_of_ways_and_is_label_equivariant():
    model = head_model().eval()
    five = image_tasks(ways=5).fixed_tasks("test", 2)
    ten = image_tasks(ways=10).fixed_tasks("test", 2)
    assert model.predict(five).shape == (2, 15, 5)
    assert model.predict(ten).shape == (2, 30, 10)
    perm = torch.tensor([3, 0, 4, 1, 2])
    relabelled = Episode(five.support_x, perm[five.support_y], five.query_x, perm[five.query_y])
    torch.testing.assert_close(model.predict(relabelled)[..., perm], model.predict(five))


@pytest.mark.parametrize("batchnorm", ["batch", "frozen"])
@pytest.mark.parametrize("generate", ["none", ["features.*.1.*"]])
def test_batched_equals_per_task(generate, batchnorm):
    model = head_model(generate, batchnorm).eval().double()
    if HAS_OMNIGLOT:  # the real data, as the benchmark runs it (resized to the test net)
        from hypermeta.tasks.omniglot import omniglot_tasks

        episode = omniglot_tasks(DATA, ways=5, shots=1, queries=3).fixed_tasks("val", 3)
        episode = Episode(*(torch.nn.functional.interpolate(t.flatten(0, 1), size=16)
                            .reshape(*t.shape[:2], 1, 16, 16) if t.dim() == 5 else t
                            for t in (episode.support_x, episode.support_y, episode.query_x,
                                      episode.query_y)))
    else:
        episode = image_tasks().fixed_tasks("val", 3)
    episode = Episode(episode.support_x.double(), episode.support_y, episode.query_x.double(),
                      episode.query_y)
    batched = model.predict(episode)
    single = torch.cat([model.predict(episode.task(i)) for i in range(3)])
    torch.testing.assert_close(batched, single)


def test_generated_network_is_a_plain_module_with_one_row_per_class():
    model = head_model(["features.*.1.*"]).eval().double()
    episode = image_tasks(ways=7).fixed_tasks("test", 2)
    episode = Episode(episode.support_x.double(), episode.support_y, episode.query_x.double(),
                      episode.query_y)
    nets = model.generate(episode)
    assert nets[1].head.out_features == 7
    for i, net in enumerate(nets):
        torch.testing.assert_close(net(episode.query_x[i]), model.predict(episode.task(i))[0])


def test_gradients_reach_the_class_head_the_backbone_and_the_hypernetwork():
    model = head_model(["features.*.1.*"]).train()
    episode = image_tasks().sample("train", 2, torch.Generator().manual_seed(0))
    assert episode.query_y is not None
    loss = torch.nn.functional.cross_entropy(model(episode).flatten(0, 1),
                                             episode.query_y.flatten())
    loss.backward()
    # (the encoder's own gradient is zero at the start: the hyperfan-initialised output layer
    # generates norm parameters from the bias alone)
    for name in ("class_head.correction.2.weight", "target.module.features.0.0.weight",
                 "hypernet.head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_bad_support_sets_raise_clear_errors_and_change_nothing():
    model = head_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    episode = image_tasks().fixed_tasks("test", 2)
    labels = episode.support_y.clone()
    labels[labels == 2] = 4  # class 2 has no support example
    missing = Episode(episode.support_x, labels, episode.query_x)
    with pytest.raises(ValueError, match="classes without support"):
        model(missing)
    floats = Episode(episode.support_x, episode.support_y.float(), episode.query_x)
    with pytest.raises(ValueError, match="integer class labels"):
        model(floats)
    empty = Episode(episode.support_x[:, :0], episode.support_y[:, :0], episode.query_x)
    with pytest.raises(ValueError, match="support set is empty"):
        model(empty)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrong_construction_is_refused():
    net = Conv4(in_channels=1, num_classes=5, hidden=8, image_size=16)
    with pytest.raises(ValueError, match="class_head='features'"):
        FunctionalTarget(net, class_head="features")
    with pytest.raises(ValueError, match="needs class_head"):
        FunctionalTarget(net, generate="none")
    target = FunctionalTarget(net, generate="none", class_head="head")
    with pytest.raises(ValueError, match="feature_dim"):
        HyperModel(None, None, target, kind="classification", class_head=ClassHead(3))
    with pytest.raises(ValueError, match="classification"):
        HyperModel(None, None, target, class_head=ClassHead(target.feature_dim))


@pytest.fixture
def synthetic_family():
    TASK_FAMILIES.register("synthetic", lambda **kw: image_tasks(**kw))
    yield
    TASK_FAMILIES.unregister("synthetic")


def test_end_to_end_training_on_synthetic_images_beats_chance(tmp_path, synthetic_family):
    from hypermeta.config import RunConfig
    from hypermeta.evaluate import evaluate
    from hypermeta.runs import load_run
    from hypermeta.train import fit

    config = RunConfig.from_dict({
        "method": "hypernet", "seed": 0,
        "tasks": {"name": "synthetic", "ways": 5, "shots": 1, "queries": 3},
        "target": {"name": "conv4", "in_channels": 1, "num_classes": 5, "hidden": 16,
                   "image_size": 16},
        "generate": "none", "class_head": {"enabled": True, "hidden": 16},
        "train": {"steps": 150, "meta_batch": 4, "lr": 0.003, "val_every": 150,
                  "val_tasks": 50}})
    fit(config, tmp_path)
    run = load_run(tmp_path)
    learner, tasks = run.learner, run.tasks
    test = tasks.fixed_tasks("test", 100)
    trained = evaluate(learner.predict, test, "classification")["mean"]
    torch.manual_seed(0)
    untrained = evaluate(type(learner)(None, None, FunctionalTarget(
        Conv4(1, 5, 8, 16), generate="none", class_head="head"), kind="classification",
        class_head=ClassHead(8 * 1 * 1)).eval().predict, test, "classification")["mean"]
    assert trained > 0.2 + 0.3  # chance is 0.2
    assert trained > untrained + 0.05


def test_fusion_with_a_class_head_unites_two_label_sets():
    from hypermeta import inspect as hi

    model = head_model(["features.*.1.*"]).eval().double()
    with torch.no_grad():  # at its start the generator ignores z (hyperfan: bias alone)
        for p in model.hypernet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    whole = image_tasks(ways=10, shots=2, queries=3).fixed_tasks("test", 1).to("cpu", torch.float64)
    a, b = hi.class_subtask(whole, 0, 5), hi.class_subtask(whole, 5, 10)
    combined = hi.union_task(a, b)
    assert combined.query_x.shape[1] == whole.query_x.shape[1]
    fused = hi.fuse(model, a, b, combined)
    # a parent on its own task is exactly the model's prediction for that task
    own = (model.predict(a).argmax(-1) == a.query_y).double().mean()
    assert fused.metrics["parent_a"]["a"] == pytest.approx(float(own))
    for name, network in fused.networks.items():  # plain 10-way networks over the union
        assert not any(isinstance(m, HyperModel) for m in network.modules())
        logits = network(combined.query_x[0])
        assert logits.shape == (combined.query_x.shape[1], 10)
        accuracy = (logits.argmax(-1) == combined.query_y[0]).double().mean()
        assert fused.metrics[name]["combined"] == pytest.approx(float(accuracy)), name
    # the candidates differ only in the generated layers: the mixed one is neither parent
    mix, parent = fused.networks["embedding_mix"], fused.networks["parent_a"]
    assert any(not torch.equal(p, q) for p, q in zip(mix.parameters(), parent.parameters()))
