import pytest
import torch
from torch import nn

from hypermeta import MLP, Episode, FunctionalTarget, HyperModel, MLPHyperNet, SetEncoder
from hypermeta.adapt import adapt
from hypermeta.baselines import MAML
from hypermeta.evaluate import summarize
from hypermeta.kinds import get_kind

REGRESSION = get_kind("regression")


def tiny_episode(num_tasks=3):
    g = torch.Generator().manual_seed(0)
    def r(n):
        return torch.randn(num_tasks, n, 1, generator=g, dtype=torch.float64)
    return Episode(r(4), r(4), r(5), r(5))


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_matches_hand_written_autograd(first_order):
    torch.manual_seed(0)
    net = MLP(1, 1, hidden=(5,)).double()
    maml = MAML(FunctionalTarget(net), "regression", inner_lr=0.1, inner_steps=2,
                first_order=first_order)
    episode = tiny_episode()
    loss = REGRESSION.per_task_loss(maml(episode), episode.query_y).mean()
    (auto,) = torch.autograd.grad(loss, [maml.init])

    # reference: an explicit per-task loop over a plain nn.Module's weights
    theta = [p.detach().clone().requires_grad_(True) for p in net.parameters()]

    def run(weights, x):
        h = torch.relu(x @ weights[0].T + weights[1])
        return h @ weights[2].T + weights[3]

    total = 0.0
    for t in range(episode.num_tasks):
        weights = list(theta)
        for _ in range(2):
            inner = ((run(weights, episode.support_x[t]) - episode.support_y[t]) ** 2).mean()
            grads = torch.autograd.grad(inner, weights, create_graph=not first_order)
            weights = [w - 0.1 * g for w, g in zip(weights, grads)]
        total = total + ((run(weights, episode.query_x[t]) - episode.query_y[t]) ** 2).mean()
    reference = torch.autograd.grad(total / episode.num_tasks, theta)
    expected = torch.cat([g.reshape(-1) for g in reference])
    torch.testing.assert_close(auto, expected, rtol=1e-10, atol=1e-12)


def test_second_order_differs_from_first_order():
    torch.manual_seed(0)
    net = MLP(1, 1, hidden=(5,)).double()
    grads = []
    for first_order in (False, True):
        maml = MAML(FunctionalTarget(net), "regression", inner_lr=0.1, first_order=first_order)
        ep = tiny_episode()
        loss = REGRESSION.per_task_loss(maml(ep), ep.query_y).mean()
        grads.append(torch.autograd.grad(loss, [maml.init])[0])
    assert not torch.allclose(grads[0], grads[1])


def test_finetuning_is_deterministic_and_lowers_the_support_loss():
    target = FunctionalTarget(MLP(1, 1, hidden=(8,))).double()
    model = HyperModel(SetEncoder(1, 1, 8), MLPHyperNet(target.spec, 8), target,
                       finetune_steps=5, finetune_lr=0.05).double()
    episode = tiny_episode()
    before = model.adapted_params(episode, finetune_steps=0)
    after = model.adapted_params(episode)
    again = model.adapted_params(episode)
    assert all(torch.equal(after[k], again[k]) for k in after)
    loss_before = REGRESSION.per_task_loss(target(before, episode.support_x), episode.support_y)
    loss_after = REGRESSION.per_task_loss(target(after, episode.support_x), episode.support_y)
    assert torch.all(loss_after < loss_before)
    nets = model.generate(episode)
    torch.testing.assert_close(nets[1](episode.query_x[1]), model.predict(episode)[1])


def test_adapt_batched_equals_per_task():
    target = FunctionalTarget(nn.Linear(1, 1)).double()
    params = {"weight": torch.randn(3, 1, 1, dtype=torch.float64),
              "bias": torch.randn(3, 1, dtype=torch.float64)}
    episode = tiny_episode()
    batched = adapt(target, params, episode, REGRESSION, steps=3, lr=0.1)
    for t in range(3):
        one = adapt(target, {k: v[t:t + 1] for k, v in params.items()}, episode.task(t),
                    REGRESSION, steps=3, lr=0.1)
        for k in params:
            torch.testing.assert_close(batched[k][t], one[k][0], rtol=0, atol=1e-12)


def test_summary_confidence_interval():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = summarize(values)
    assert out["mean"] == 2.5 and out["tasks"] == 4
    assert abs(out["ci95"] - 1.96 * values.std().item() / 2) < 1e-12


def test_a_diverging_task_keeps_its_last_finite_parameters_and_others_are_unaffected():
    target = FunctionalTarget(nn.Linear(1, 1)).double()
    params = {"weight": torch.ones(2, 1, 1, dtype=torch.float64),
              "bias": torch.zeros(2, 1, dtype=torch.float64)}
    x = torch.tensor([[[1.0]], [[1e200]]], dtype=torch.float64)  # task 1: its loss overflows
    episode = Episode(x, torch.zeros(2, 1, 1, dtype=torch.float64), x)
    tuned = adapt(target, params, episode, REGRESSION, steps=3, lr=0.1, keep_finite=True)
    assert all(bool(torch.isfinite(v).all()) for v in tuned.values())
    torch.testing.assert_close(tuned["weight"][1], params["weight"][1])  # never stepped
    alone = adapt(target, {k: v[:1] for k, v in params.items()}, episode.task(0), REGRESSION,
                  steps=3, lr=0.1)
    unguarded = adapt(target, params, episode, REGRESSION, steps=3, lr=0.1)  # MAML's default
    assert not bool(torch.isfinite(unguarded["weight"][1]).all())
    torch.testing.assert_close(tuned["weight"][:1], alone["weight"])
