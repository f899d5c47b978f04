import math

import pytest
import torch

from hypermeta import ParamSpec


def make_spec() -> ParamSpec:
    return ParamSpec(
        names=("a.weight", "a.bias", "n.weight"),
        shapes=(torch.Size([3, 2]), torch.Size([3]), torch.Size([3])),
        kinds=("weight", "bias", "norm_weight"),
        fan_in=(2, 2, 3),
        fan_out=(3, 3, 3),
    )


def test_unflatten_flatten_round_trip_with_leading_dims():
    spec = make_spec()
    flat = torch.randn(4, 5, spec.numel())
    params = spec.unflatten(flat)
    assert params["a.weight"].shape == (4, 5, 3, 2)
    assert params["n.weight"].shape == (4, 5, 3)
    assert torch.equal(spec.flatten(params), flat)


def test_numel_and_sizes():
    spec = make_spec()
    assert spec.sizes() == (6, 3, 3)
    assert spec.numel() == 12


def test_he_std_and_offsets_follow_kinds():
    spec = make_spec()
    std, off = spec.he_std(), spec.offsets()
    assert torch.allclose(std[:6], torch.full((6,), math.sqrt(2 / 2)))
    assert torch.all(std[6:] == 0)
    assert torch.all(off[:9] == 0) and torch.all(off[9:] == 1)
    assert torch.allclose(spec.he_std("fan_out")[:6], torch.full((6,), math.sqrt(2 / 3)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kinds=("weight", "bias", "bogus")), "bogus"),
        (dict(names=("x", "x", "y")), "unique"),
        (dict(fan_in=(1, 2)), "equal lengths"),
    ],
)
def test_invalid_spec_raises(kwargs, message):
    fields = dict(
        names=("a.weight", "a.bias", "n.weight"),
        shapes=(torch.Size([3, 2]), torch.Size([3]), torch.Size([3])),
        kinds=("weight", "bias", "norm_weight"),
        fan_in=(2, 2, 3),
        fan_out=(3, 3, 3),
    )
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ParamSpec(**fields)


def test_unflatten_wrong_width_raises():
    with pytest.raises(ValueError, match="spec needs 12"):
        make_spec().unflatten(torch.randn(2, 11))
