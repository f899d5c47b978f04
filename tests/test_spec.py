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


def test_a_parts_kind_needs_and_follows_an_explicit_initialisation():
    from hypermeta.spec import Init

    rows = dict(names=("p.a", "p.b"), shapes=(torch.Size([2, 8]), torch.Size([4])),
                kinds=("my_factor", "my_shift"), fan_in=(8, 4), fan_out=(2, 4))
    with pytest.raises(ValueError, match="explicit initialisation"):
        ParamSpec(**rows)
    part = ParamSpec(**rows, inits=(Init(std=1.0, he=True), Init(offset=0.5, std=0.1)))
    assert torch.allclose(part.he_std(), torch.tensor([0.5] * 16 + [0.1] * 4))
    assert torch.allclose(part.he_std("fan_out"), torch.tensor([1.0] * 16 + [0.1] * 4))
    assert torch.equal(part.offsets(), torch.tensor([0.0] * 16 + [0.5] * 4))
    both = ParamSpec.concat([make_spec(), part])
    assert both.names == make_spec().names + part.names
    assert torch.equal(both.offsets(), torch.cat([make_spec().offsets(), part.offsets()]))
    assert make_spec().inits[2] == Init(offset=1.0)  # generic kinds get their defaults
    with pytest.raises(ValueError, match="unique"):
        ParamSpec.concat([part, part])
