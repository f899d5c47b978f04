import math

import pytest
import torch
from torch import nn

from hypermeta import (
    MLP,
    ChunkedHyperNet,
    Conv4,
    DeltaHyperNet,
    Episode,
    FunctionalTarget,
    HyperModel,
    MLPHyperNet,
    SetEncoder,
    count_parameters,
)


def layered_target() -> FunctionalTarget:
    """Layers with very different fan-ins (3, 64, 256, 1152), so the check is meaningful."""
    net = nn.Sequential(nn.Linear(3, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(),
                        nn.Linear(64, 2))
    conv = nn.Conv2d(128, 4, 3)
    return FunctionalTarget(nn.ModuleDict({"mlp": net, "conv": conv}))


@pytest.mark.parametrize("make", [
    lambda s: MLPHyperNet(s, 32, hidden=(64, 64)),
    lambda s: MLPHyperNet(s, 32, hidden=()),
    lambda s: ChunkedHyperNet(s, 32, chunk_size=512, hidden=(64,)),
], ids=["mlp", "mlp-linear", "chunked"])
def test_hyperfan_in_gives_he_std_per_layer_and_small_biases(make):
    target = layered_target()
    hyper = make(target.spec)
    with torch.no_grad():
        params = hyper(torch.randn(256, 32))  # z ~ N(0, I)
    for name, kind, fan_in in zip(target.spec.names, target.spec.kinds, target.spec.fan_in):
        he = math.sqrt(2 / fan_in)
        std = params[name].std().item()
        if kind == "weight":
            assert he / 2 <= std <= he * 2, f"{name}: std {std:.4f} vs He {he:.4f}"
        else:
            assert std <= 0.2 * he, f"{name}: bias std {std:.4f} is not near zero"


def test_hyperfan_out_uses_fan_out():
    target = layered_target()
    hyper = MLPHyperNet(target.spec, 32, init="hyperfan_out")
    with torch.no_grad():
        params = hyper(torch.randn(256, 32))
    weight = params["mlp.0.weight"]  # fan_in 3, fan_out 256
    assert math.isclose(weight.std().item(), math.sqrt(2 / 256), rel_tol=0.5)


def test_norm_scales_start_at_one():
    target = FunctionalTarget(Conv4(hidden=8), generate=[nn.BatchNorm2d])
    params = MLPHyperNet(target.spec, 8)(torch.randn(4, 8))
    assert torch.all(params["features.0.1.weight"] == 1)


def test_chunked_compression_ratio_below_one_and_defined_once():
    target = FunctionalTarget(Conv4())
    hyper = ChunkedHyperNet(target.spec, 32, chunk_size=1024, chunk_dim=8, hidden=(32,))
    assert hyper.compression_ratio == count_parameters(hyper) / target.spec.numel()
    assert hyper.compression_ratio < 0.5
    params = hyper(torch.randn(2, 32))
    assert {n: p.shape[1:] for n, p in params.items()} == dict(
        zip(target.spec.names, target.spec.shapes))
    assert MLPHyperNet(target.spec, 32).compression_ratio > 1


def test_delta_hypernet_starts_at_its_base_and_learns_deltas():
    target = FunctionalTarget(MLP(2, 1, hidden=(8,)))
    base = target.initial_params()
    hyper = DeltaHyperNet(target.spec, 4, base=base)
    params = hyper(torch.randn(3, 4))
    for name in target.spec.names:
        assert torch.equal(params[name], base[name].expand_as(params[name]))


def _model(hypernet_cls, **kwargs):
    target = FunctionalTarget(MLP(1, 1, hidden=(8,)), generate="2.*")
    encoder = SetEncoder(1, 1, 6, hidden=8)
    return HyperModel(encoder, hypernet_cls(target.spec, 6, **kwargs), target)


def _episode(num_tasks=3, dtype=torch.float32):
    def r(n):
        return torch.randn(num_tasks, n, 1, dtype=dtype)
    return Episode(r(5), r(5), r(7), r(7))


@pytest.mark.parametrize("cls, kwargs", [
    (MLPHyperNet, {"hidden": (8,)}),
    (ChunkedHyperNet, {"chunk_size": 4, "hidden": (8,)}),
    (DeltaHyperNet, {"hidden": (8,)}),
])
def test_gradients_reach_every_parameter(cls, kwargs):
    model = _model(cls, **kwargs)
    if cls is DeltaHyperNet:  # its zero-initialised delta head blocks trunk gradients at step 0
        nn.init.normal_(model.hypernet.head.weight, std=0.1)
    episode = _episode()
    loss = ((model(episode) - episode.query_y) ** 2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reached {missing}"


def test_gradcheck_float64_through_encoder_hypernet_and_target():
    model = _model(MLPHyperNet, hidden=(4,)).double()
    episode = _episode(2, torch.float64)
    names = [n for n, _ in model.named_parameters()]

    def loss(*flat):
        params = dict(zip(names, flat))
        pred = torch.func.functional_call(model, params, (episode,))
        return ((pred - episode.query_y) ** 2).mean()

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5)


def test_wrong_embedding_width_raises():
    target = FunctionalTarget(MLP(1, 1))
    with pytest.raises(ValueError, match=r"z must have shape \[T, 8\]"):
        MLPHyperNet(target.spec, 8)(torch.randn(3, 7))


def test_part_rows_start_as_their_inits_say():
    from hypermeta.gates import GATE_INITIAL_LOGIT, initial_width

    target = FunctionalTarget(MLP(2, 1, hidden=(8, 6)), generate=[nn.Linear], adapter="lowrank",
                              rank=2, gates=True)
    hyper = MLPHyperNet(target.spec, 16)
    params = hyper(torch.randn(512, 16))
    assert torch.all(params["0.lora_b"] == 0)
    he = math.sqrt(2 / 8)  # lora_a of layer 2: [rank, fan_in 8], He by fan_in
    assert he / 2 <= params["2.lora_a"].std().item() <= he * 2
    bias = target.spec.unflatten(hyper.head.bias.detach())
    assert torch.all(bias["0.gate"] == GATE_INITIAL_LOGIT)  # gates start open
    stds = target.spec.unflatten(target.spec.he_std())
    assert torch.all(stds["0.gate"] == 1)  # and differ between tasks from the start
    width = FunctionalTarget(MLP(2, 1, hidden=(8, 6)), gates=True, gate_mode="width")
    offsets = width.spec.unflatten(width.spec.offsets())
    assert offsets["2.gate"].item() == pytest.approx(initial_width(6))
    stds = width.spec.unflatten(width.spec.he_std())
    assert stds["2.gate"].item() == pytest.approx(0.1)
