import pytest
import torch

from hypermeta import (
    MLP,
    Episode,
    FunctionalTarget,
    HyperModel,
    MLPHyperNet,
    SetEncoder,
    TaskEmbedding,
)


def task_model(device):
    target = FunctionalTarget(MLP(1, 1, hidden=(16,)))
    hypernet = MLPHyperNet(target.spec, 8, hidden=(16,))
    return HyperModel(TaskEmbedding(4, 8), hypernet, target).to(device)


def set_model(device):
    target = FunctionalTarget(MLP(1, 1, hidden=(16,)))
    return HyperModel(SetEncoder(1, 1, 8, hidden=16), MLPHyperNet(target.spec, 8, hidden=(16,)),
                      target).to(device)


def regression_episode(num_tasks=3, descriptor=None):
    return Episode(torch.randn(num_tasks, 5, 1), torch.randn(num_tasks, 5, 1),
                   torch.randn(num_tasks, 7, 1), torch.randn(num_tasks, 7, 1), descriptor)


def test_forward_and_generate_agree_on_any_device(device):
    model = set_model(device)
    episode = regression_episode()  # on the CPU: the model moves it
    pred = model(episode)
    assert pred.shape == (3, 7, 1) and pred.device.type == device.type
    nets = model.generate(episode)
    assert len(nets) == 3
    for i, net in enumerate(nets):
        assert next(net.parameters()).device.type == device.type
        torch.testing.assert_close(net(episode.query_x[i].to(device)), pred[i].detach())


def test_generated_networks_differ_between_tasks():
    model = task_model("cpu")
    episode = regression_episode(descriptor=torch.tensor([0, 1, 2]))
    nets = model.generate(episode)
    assert not torch.equal(nets[0][0].weight, nets[1][0].weight)


BAD = {
    "descriptor type": (lambda e: Episode(e.support_x, e.support_y, e.query_x, e.query_y,
                                          ["a", "b", "c"]), "integer task ids of shape [T]"),
    "descriptor shape": (lambda e: Episode(e.support_x, e.support_y, e.query_x, e.query_y,
                                           torch.tensor([0, 1])), "descriptor must have 3 entries"),
    "unknown id": (lambda e: Episode(e.support_x, e.support_y, e.query_x, e.query_y,
                                     torch.tensor([0, 1, 9])), "unknown task ids [9]"),
    "task dim": (lambda e: Episode(e.support_x, e.support_y, torch.randn(4, 7, 1), None,
                                   e.descriptor), "support_x has 3 tasks in dim 0"),
    "nan query": (lambda e: Episode(e.support_x, e.support_y, e.query_x.masked_fill(
        torch.rand_like(e.query_x) < 0.5, float("nan")), e.query_y, e.descriptor),
        "query_x contains NaN"),
    "x shape": (lambda e: Episode(torch.randn(3, 5, 2), e.support_y, torch.randn(3, 7, 2),
                                  e.query_y, e.descriptor), "the target expects [1]"),
    "all masked": (lambda e: Episode(e.support_x, e.support_y, e.query_x, e.query_y,
                                     e.descriptor, torch.zeros(3, 5, dtype=torch.bool)),
                   "support set is empty for tasks [0, 1, 2]"),
}


def test_empty_support_set_is_rejected_by_a_support_set_model():
    model = set_model("cpu")
    with pytest.raises(ValueError, match="support set is empty"):
        model(Episode(torch.randn(3, 0, 1), torch.randn(3, 0, 1), torch.randn(3, 7, 1)))


def test_descriptor_models_need_no_support_set():
    model = task_model("cpu")
    episode = Episode(torch.randn(2, 0, 1), torch.randn(2, 0, 1), torch.randn(2, 7, 1),
                      descriptor=torch.tensor([1, 3]))
    assert model(episode).shape == (2, 7, 1)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_a_clear_error_and_changes_nothing(case):
    model = task_model("cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    make, message = BAD[case]
    good = regression_episode(descriptor=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError) as info:
        model(make(good))
    assert message in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_nan_descriptor_is_rejected():
    target = FunctionalTarget(MLP(1, 1, hidden=(4,)))
    from hypermeta import FeatureEncoder
    model = HyperModel(FeatureEncoder(2, 8), MLPHyperNet(target.spec, 8), target)
    episode = regression_episode(descriptor=torch.tensor([[0.0, 1.0], [float("nan"), 1.0],
                                                          [1.0, 2.0]]))
    with pytest.raises(ValueError, match="descriptor contains NaN"):
        model(episode)


def test_not_an_episode_raises_type_error():
    with pytest.raises(TypeError, match="episode must be a hypermeta.Episode"):
        set_model("cpu")(torch.randn(3, 5, 1))


def test_mismatched_parts_raise():
    target = FunctionalTarget(MLP(1, 1))
    other = FunctionalTarget(MLP(1, 1, hidden=(8,)))
    with pytest.raises(ValueError, match="spec differs"):
        HyperModel(TaskEmbedding(2, 8), MLPHyperNet(other.spec, 8), target)
    with pytest.raises(ValueError, match=r"out_dim \(4\) must equal hypernet.z_dim \(8\)"):
        HyperModel(TaskEmbedding(2, 4), MLPHyperNet(target.spec, 8), target)
