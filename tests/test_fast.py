"""The fast paths equal the normal ones: ``LinearPlan`` (a plain Linear stack run as
F.linear/baddbmm) against ``functional_call`` under ``vmap``, gradients included;
``HyperModel.prepare_inference`` against ``predict`` / ``adapted_params`` for every built-in
target and adapter; bad input gets ``predict``'s errors and changes nothing."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from hypermeta import RunConfig
from hypermeta.encoders import SetEncoder
from hypermeta.episodes import Episode
from hypermeta.networks import MLP
from hypermeta.runs import build_learner, build_tasks
from hypermeta.target import FunctionalTarget


@pytest.mark.parametrize("generate", ["all", "0.*", ["2.weight"], "4.bias"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "silu"])
@pytest.mark.parametrize("tasks", [1, 4])
def test_linear_plan_equals_the_generic_path_with_gradients(generate, activation, tasks):
    torch.manual_seed(0)
    target = FunctionalTarget(MLP(3, 2, (8, 5), activation), generate=generate)
    assert target._plan is not None
    params = {n: torch.randn(tasks, *s, requires_grad=True)
              for n, s in zip(target.spec.names, target.spec.shapes)}
    x = torch.randn(tasks, 6, 3)
    inputs = [*params.values(), *target.parameters()]
    planned = target(params, x)
    plan, target._plan = target._plan, None  # the generic path: functional_call (+ vmap)
    generic = target(params, x)
    target._plan = plan
    assert torch.allclose(planned, generic, atol=1e-6)
    for a, b in zip(torch.autograd.grad(planned.square().sum(), inputs, allow_unused=True),
                    torch.autograd.grad(generic.square().sum(), inputs, allow_unused=True)):
        assert (a is None) == (b is None)
        assert a is None or torch.allclose(a, b, atol=1e-5)


def test_only_plain_linear_stacks_get_a_plan():
    assert FunctionalTarget(MLP(2, 1, (4,)))._plan is not None
    assert FunctionalTarget(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)))._plan
    hooked = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    hooked[0].register_forward_hook(lambda m, i, o: o * 2)
    for module in (nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Linear(4, 1)),
                   hooked, nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.Linear(4, 1))):
        assert FunctionalTarget(module)._plan is None
    # a part (adapter, gates, class head) keeps the generic path
    assert FunctionalTarget(MLP(2, 1, (4,)), generate=nn.Linear, adapter="film")._plan is None
    assert FunctionalTarget(MLP(2, 1, (4,)), gates=True)._plan is None


def test_pooling_first_equals_pooling_after_the_last_layer():
    torch.manual_seed(0)
    encoder = SetEncoder(1, 1, 16, hidden=32)
    x, y = torch.randn(5, 7, 1), torch.randn(5, 7, 1)
    plain = Episode(x, y, x)
    masked = replace(plain, support_mask=torch.ones(5, 7, dtype=torch.bool))  # the old order
    assert torch.allclose(encoder(plain), encoder(masked), atol=1e-6)


SINUSOID = {"method": "hypernet", "seed": 1, "tasks": {"name": "sinusoid", "shots": 5,
                                                       "queries": 7},
            "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [16, 16]},
            "encoder": {"kind": "set", "dim": 16, "hidden": 32},
            "hypernet": {"hidden": [32]}}
VARIANTS = {
    "mlp": {},
    "mlp_tanh_two_layers": {"target": {"name": "mlp", "in_dim": 1, "out_dim": 1,
                                       "hidden": [8, 8], "activation": "tanh"},
                            "hypernet": {"hidden": [32, 24]}},
    "mlp_some_layers": {"generate": "4.*"},
    "mlp_lowrank": {"generate": ["0.*", "2.*"], "adapter": "lowrank", "rank": 2},
    "mlp_film": {"generate": ["0.*", "2.*"], "adapter": "film"},
    "resmlp": {"target": {"name": "resmlp", "in_dim": 1, "out_dim": 1, "width": 8,
                          "hidden": [8, 8]}},
    "chunked": {"hypernet": {"kind": "chunked", "chunk_size": 64, "hidden": [32]}},
    "finetuned": {"finetune": {"steps": 2, "lr": 0.01}},
    "gates": {"gates": {"enabled": True}},
    "attention_pooling": {"encoder": {"kind": "set", "dim": 16, "hidden": 32,
                                      "pooling": "attention"}},
}


def _model(variant: str):
    config = RunConfig.from_dict({**SINUSOID, **VARIANTS[variant]})
    tasks = build_tasks(config)
    model = build_learner(config, tasks)
    for p in model.parameters():  # trained-looking weights, not the initialisation
        p.data.add_(0.05 * torch.randn_like(p))
    return model.eval(), tasks


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_predictor_equals_predict_for_every_built_in_variant(variant):
    torch.manual_seed(0)
    model, tasks = _model(variant)
    fast = model.prepare_inference()
    assert fast.lean == (variant in ("mlp", "mlp_tanh_two_layers", "mlp_some_layers")), variant
    test = tasks.fixed_tasks("test", 6)
    for episode in (test, test.task(2), Episode(test.support_x, test.support_y, test.query_x)):
        assert torch.allclose(fast(episode), model.predict(episode), atol=1e-5, rtol=1e-5)
        mine, theirs = fast.params(episode), model.adapted_params(episode)
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.allclose(mine[name], theirs[name], atol=1e-5, rtol=1e-5), name
    if fast.lean:  # encoder + generator as a chain: phi3 and rho1, rho2 and trunk1 folded
        linears = [s for s in fast._steps if isinstance(s, tuple)]
        assert len(linears) == len(model.encoder.phi) // 2 + 1 + len(model.hypernet.trunk) // 2 \
            + 1 + len(model.encoder.rho) // 2 + 1 - 2
        # float64 inputs take the full validation (which casts) and still get the answer
        double = Episode(test.support_x.double(), test.support_y.double(), test.query_x.double())
        assert torch.allclose(fast(double), model.predict(double), atol=1e-5)


def test_compiled_fast_path_equals_predict():
    model, tasks = _model("mlp")
    episode = tasks.fixed_tasks("test", 3)
    fast = model.prepare_inference(compile=True)
    assert torch.allclose(fast(episode), model.predict(episode), atol=1e-5, rtol=1e-5)


def _message(call, episode) -> str:
    with pytest.raises(ValueError) as err:
        call(episode)
    return str(err.value)


def test_bad_input_gets_predicts_errors_and_changes_nothing():
    model, tasks = _model("mlp")
    fast = model.prepare_inference()
    before = copy.deepcopy(model.state_dict())
    good = tasks.fixed_tasks("test", 2)
    nan_x = good.support_x.clone()
    nan_x[1, 0, 0] = float("nan")
    inf_q = good.query_x.clone()
    inf_q[0, 3, 0] = float("inf")
    bad = [replace(good, support_x=nan_x), replace(good, query_x=inf_q),
           replace(good, support_x=good.support_x[:, :0], support_y=good.support_y[:, :0]),
           replace(good, query_x=good.query_x[..., None]),
           replace(good, support_y=good.support_y[:1])]
    for episode in bad:
        message = _message(model.predict, episode)
        assert _message(fast, episode) == message
        assert _message(fast.params, episode) == message
    huge = replace(good, support_y=torch.full_like(good.support_y, 3e38))
    assert "not finite" in _message(fast, huge)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
