import warnings

import pytest
import torch

from hypermeta import (
    MLP,
    Conv4,
    Episode,
    FunctionalTarget,
    HyperModel,
    MLPHyperNet,
    ResMLP,
    SetEncoder,
    TransformerNet,
    build_network,
)
from hypermeta.gates import binary_gates, count_flops, gate_values, structure_cost, unit_logits
from tests.helpers import random_params, task


def gated_params(target, num_tasks, scale=2.0):
    params = random_params(target, num_tasks)
    for name, kind in zip(target.spec.names, target.spec.kinds):
        if kind == "gate":
            params[name] = torch.randn_like(params[name]) * scale
        if kind == "gate_width":  # open fractions in (0.2, 0.9)
            params[name] = 0.2 + 0.7 * torch.rand_like(params[name])
    return params


def test_gates_are_exactly_binary_at_evaluation_and_relaxed_in_training():
    logits = torch.randn(1000) * 3
    hard = gate_values(logits, training=False)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    soft = gate_values(logits, training=True)
    assert soft.min() >= 0 and soft.max() <= 1
    assert (soft == 0).any() and (soft == 1).any() and ((soft > 0) & (soft < 1)).any()
    assert torch.equal(hard.bool(), binary_gates(logits))


@pytest.mark.parametrize("mode", ["units", "width"])
@pytest.mark.parametrize("net, x_shape", [(lambda: MLP(2, 3, hidden=(16, 12)), (2,)),
                                          (lambda: Conv4(hidden=8), (1, 28, 28)),
                                          (lambda: ResMLP(2, 3, 8, (16, 12, 10)), (2,)),
                                          (lambda: TransformerNet(4, 3, 16, 4, 2, 12), (6, 4))],
                         ids=["mlp", "conv4", "resmlp", "transformer"])
def test_pruned_network_equals_gated_output_and_is_smaller(net, x_shape, mode):
    full = net()
    target = FunctionalTarget(full, gates=True, gate_mode=mode).double().eval()
    params = gated_params(target, 3)
    x = torch.randn(3, 5, *x_shape, dtype=torch.float64)
    out = target(params, x)
    for i in range(3):
        small = target.materialize(task(params, i))
        assert type(small) is type(full)
        torch.testing.assert_close(small(x[i]), out[i], rtol=1e-9, atol=1e-9)
        assert sum(p.numel() for p in small.parameters()) < sum(
            p.numel() for p in full.parameters())
        assert count_flops(small, x[i]) < count_flops(full.double(), x[i])
        one = {k: v[i:i + 1] for k, v in params.items()}
        torch.testing.assert_close(target(one, x[i:i + 1])[0], out[i], rtol=0, atol=1e-12)


def test_a_site_never_loses_every_unit_and_says_so():
    target = FunctionalTarget(MLP(1, 1, hidden=(6,)), gates=True).double().eval()
    params = random_params(target, 1)
    params["0.gate"] = -torch.rand(1, 6, dtype=torch.float64) - 1  # every gate closed
    with pytest.warns(RuntimeWarning, match="would remove every unit"):
        small = target.materialize(task(params, 0))
    assert small.config["hidden"] == [1]
    x = torch.randn(1, 4, 1, dtype=torch.float64)
    torch.testing.assert_close(small(x[0]), target(params, x)[0])


def test_gradients_reach_the_gate_generator():
    target = FunctionalTarget(MLP(1, 1, hidden=(8,)), gates=True, gate_sparsity=1.0)
    hyper = MLPHyperNet(target.spec, 8)
    model = HyperModel(SetEncoder(1, 1, 8), hyper, target).train()
    ep = Episode(torch.randn(4, 5, 1), torch.randn(4, 5, 1), torch.randn(4, 6, 1),
                 torch.randn(4, 6, 1))
    out = model.outputs(ep)
    loss = ((out.pred - ep.query_y) ** 2).mean() + out.extra_loss
    loss.backward()
    start = sum(target.spec.sizes()[:-1])  # the gate logits are the last spec entry
    assert target.spec.kinds[-1] == "gate"
    assert hyper.head.weight.grad[start:].abs().sum() > 0
    assert hyper.head.bias.grad[start:].abs().sum() > 0


def test_gate_estimators_in_training_and_evaluation():
    logits = torch.tensor([[-2.0, -0.5, 0.3, 2.5]], requires_grad=True)
    det = gate_values(logits, training=True, estimator="deterministic")
    assert torch.equal(det, gate_values(logits, training=True, estimator="deterministic"))
    torch.testing.assert_close(det, (torch.sigmoid(logits) * 1.2 - 0.1).clamp(0, 1))
    ste = gate_values(logits, training=True, estimator="ste")
    assert torch.equal(ste.detach(), binary_gates(logits).float())  # exact 0/1 forward
    ste.sum().backward()
    s = torch.sigmoid(logits.detach())
    torch.testing.assert_close(logits.grad, s * (1 - s))  # the sigmoid's gradient backward
    for estimator in ("hard_concrete", "deterministic", "ste"):
        assert torch.equal(gate_values(logits, training=False, estimator=estimator),
                           binary_gates(logits).float())
    with pytest.raises(ValueError, match="gate_estimator"):
        FunctionalTarget(MLP(1, 1, hidden=(4,)), gates=True, gate_estimator="magic")


def test_gates_held_open_pass_everything_and_cost_nothing():
    target = FunctionalTarget(MLP(2, 1, hidden=(8,)), gates=True, gate_sparsity=1.0).double()
    params = gated_params(target, 2)
    params["0.gate"] = -torch.arange(1.0, 9.0, dtype=torch.float64).expand(2, 8)  # one open
    open_params = {**params, "0.gate": torch.full((2, 8), 9.0, dtype=torch.float64)}
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    target.eval()
    assert not torch.allclose(target(params, x), target(open_params, x))
    target.hold_gates_open(True)
    torch.testing.assert_close(target(params, x), target(open_params, x))
    assert target.extra_loss(params) is None
    target.hold_gates_open(False)
    assert target.extra_loss(params) is not None


def test_gate_warmup_leaves_the_gate_generator_untouched(tmp_path):
    from hypermeta.config import RunConfig
    from hypermeta.runs import load_run
    from hypermeta.train import fit

    def config(warmup):
        return RunConfig.from_dict({
            "method": "hypernet", "tasks": {"name": "sinusoid", "shots": 5},
            "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [16]},
            "encoder": {"kind": "set", "dim": 8, "hidden": 16}, "hypernet": {"hidden": [16]},
            "gates": {"enabled": True, "sparsity": 1.0, "warmup_steps": warmup,
                      "estimator": "ste"},
            "train": {"steps": 6, "meta_batch": 2, "val_every": 6, "val_tasks": 4,
                      "schedule": "constant"}})

    fit(config(0), tmp_path / "init", max_steps=0)
    start = load_run(tmp_path / "init").learner
    heads = {}
    for warmup in (6, 0):
        fit(config(warmup), tmp_path / str(warmup))
        model = load_run(tmp_path / str(warmup)).learner
        first = sum(model.target.spec.sizes()[:-1])  # the gate rows come last
        heads[warmup] = model.hypernet.head.weight[first:]
        assert not torch.equal(model.hypernet.head.weight[:first],
                               start.hypernet.head.weight[:first])  # the rest trained
    assert torch.equal(heads[6], start.hypernet.head.weight[first:])  # no gate gradient
    assert not torch.equal(heads[0], start.hypernet.head.weight[first:])


def test_sparsity_cost_lowers_the_active_size(tmp_path):
    from hypermeta.config import RunConfig
    from hypermeta.runs import load_run
    from hypermeta.train import fit

    active = {}
    for sparsity in (0.0, 1.0):
        config = RunConfig.from_dict({
            "method": "hypernet", "tasks": {"name": "sinusoid", "shots": 5},
            "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [32, 32]},
            "encoder": {"kind": "set", "dim": 16, "hidden": 32}, "hypernet": {"hidden": [32]},
            "gates": {"enabled": True, "sparsity": sparsity},
            "train": {"steps": 150, "meta_batch": 8, "val_every": 150, "val_tasks": 10,
                      "lr": 1e-2}})
        fit(config, tmp_path / str(sparsity))
        run = load_run(tmp_path / str(sparsity))
        model, tasks = run.learner, run.tasks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nets = model.generate(tasks.fixed_tasks("test", 20))
        active[sparsity] = sum(sum(n.config["hidden"]) for n in nets) / len(nets)
        params = model.params(tasks.fixed_tasks("test", 20))
        assert 0 <= structure_cost(params, model.target.spec) <= 1
    assert active[1.0] < 0.8 * active[0.0], active


def test_width_gates_open_a_prefix_of_units():
    target = FunctionalTarget(MLP(1, 1, hidden=(10, 20)), gates=True, gate_mode="width")
    assert [tuple(s) for s, k in zip(target.spec.shapes, target.spec.kinds)
            if k == "gate_width"] == [(1,), (1,)]
    fractions = torch.tensor([[0.0], [0.26], [0.55], [1.0]])
    gates = binary_gates(unit_logits(fractions, "gate_width", 20))
    assert gates.sum(1).tolist() == [1, 5, 11, 20]  # round(f * units), at least one
    for row in gates:  # always a prefix
        assert torch.equal(row, torch.arange(20) < row.sum())
    # at the start every unit is open
    start = target.initial_params()["0.gate"]
    assert binary_gates(unit_logits(start, "gate_width", 10)).all()


def test_whole_residual_blocks_close_and_are_removed():
    target = FunctionalTarget(ResMLP(1, 1, 8, (6, 6, 6)), gates=True).double().eval()
    params = gated_params(target, 1)
    params["blocks.1.gate"] = torch.full((1, 1), -3.0, dtype=torch.float64)  # block 1 off
    params["blocks.0.gate"] = params["blocks.2.gate"] = torch.full((1, 1), 3.0,
                                                                   dtype=torch.float64)
    x = torch.randn(1, 5, 1, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # closing a whole block is allowed, not warned about
        small = target.materialize(task(params, 0))
    assert len(small.blocks) == 2
    torch.testing.assert_close(small(x[0]), target(params, x)[0])
    params["blocks.0.gate"] = params["blocks.2.gate"] = params["blocks.1.gate"]
    empty = target.materialize(task(params, 0))  # every block closed: stem + head remain
    assert len(empty.blocks) == 0
    torch.testing.assert_close(empty(x[0]), target(params, x)[0])


def test_transformer_layers_and_heads_close_and_are_removed():
    net = TransformerNet(4, 3, d_model=16, nhead=4, num_layers=2, dim_ff=12)
    target = FunctionalTarget(net, gates=True).double().eval()
    names = [n for n, k in zip(target.spec.names, target.spec.kinds) if k == "gate"]
    assert names == ["blocks.0.heads.gate", "blocks.0.ff1.gate", "blocks.1.heads.gate",
                     "blocks.1.ff1.gate", "blocks.0.delta.gate", "blocks.1.delta.gate"]
    params = gated_params(target, 1)
    params["blocks.0.delta.gate"] = torch.full((1, 1), -3.0, dtype=torch.float64)  # layer 0 off
    params["blocks.1.delta.gate"] = torch.full((1, 1), 3.0, dtype=torch.float64)
    params["blocks.1.heads.gate"] = torch.tensor([[-2.0, 3.0, -1.0, -4.0]], dtype=torch.float64)
    params["blocks.1.ff1.gate"] = torch.full((1, 12), 2.0, dtype=torch.float64)
    x = torch.randn(1, 5, 6, 4, dtype=torch.float64)
    small = target.materialize(task(params, 0))
    assert len(small.blocks) == 1 and small.blocks[0].nhead == 1
    assert small.blocks[0].head_dim == 4 and small.blocks[0].ff1.out_features == 12
    torch.testing.assert_close(small(x[0]), target(params, x)[0])
    rebuilt = build_network(small.config)  # a pruned config is a valid config
    assert isinstance(rebuilt, TransformerNet) and rebuilt.config == small.config
    params["blocks.1.delta.gate"] = params["blocks.0.delta.gate"]
    empty = target.materialize(task(params, 0))  # every layer closed: embed, pool, head remain
    assert len(empty.blocks) == 0
    torch.testing.assert_close(empty(x[0]), target(params, x)[0])


def test_gates_follow_the_target_mode_and_return_their_weighted_cost():
    target = FunctionalTarget(MLP(2, 3, hidden=(16,)), gates=True, gate_sparsity=0.3).double()
    params = gated_params(target, 3)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    assert not torch.equal(target.train()(params, x), target(params, x))  # sampled gates
    assert torch.equal(target.eval()(params, x), target(params, x))  # binary gates
    cost = target.structure_cost(params)
    torch.testing.assert_close(cost, structure_cost(params, target.spec))
    torch.testing.assert_close(target.extra_loss(params), 0.3 * cost)


def test_a_separate_gate_generator_owns_the_gates_and_can_be_cut_off(tmp_path):
    from hypermeta import SplitHyperNet, split_spec
    from hypermeta.gates import GATE_KINDS

    target = FunctionalTarget(MLP(1, 1, hidden=(8, 8)), gates=True, gate_sparsity=1.0)
    rest, gates = split_spec(target.spec, GATE_KINDS)
    assert set(gates.kinds) == {"gate"} and "gate" not in rest.kinds
    encoder = SetEncoder(1, 1, 8)
    hyper = SplitHyperNet(MLPHyperNet(rest, 8), MLPHyperNet(gates, 8, (4,)), target.spec,
                          detach=True)
    model = HyperModel(encoder, hyper, target).train()
    ep = Episode(torch.randn(3, 5, 1), torch.randn(3, 5, 1), torch.randn(3, 6, 1),
                 torch.randn(3, 6, 1))
    params = model.params(ep)
    assert list(params) == list(target.spec.names)  # spec order
    with torch.no_grad():  # the side generator moves the gates only
        before = {k: v.clone() for k, v in model.params(ep).items()}
        hyper.side.head.bias.add_(1.0)
        after = model.params(ep)
    for name in target.spec.names:
        assert torch.equal(before[name], after[name]) == (name not in gates.names)
    out = model.outputs(ep)
    out.extra_loss.backward()  # the sparsity cost alone: reaches the side generator only
    assert hyper.side.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in encoder.parameters())
    with pytest.raises(ValueError, match="exactly once"):
        SplitHyperNet(MLPHyperNet(rest, 8), MLPHyperNet(rest, 8), target.spec)


def test_separate_gate_head_from_config_gets_its_own_learning_rate(tmp_path):
    from hypermeta.config import ConfigError, RunConfig
    from hypermeta.runs import load_run
    from hypermeta.train import _param_groups, fit

    raw = {"method": "hypernet", "tasks": {"name": "sinusoid", "shots": 5},
           "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [16]},
           "encoder": {"kind": "set", "dim": 8, "hidden": 16}, "hypernet": {"hidden": [16]},
           "gates": {"enabled": True, "sparsity": 0.1, "separate_head": True,
                     "head_hidden": [8], "head_lr_scale": 0.1, "detach": True},
           "train": {"steps": 4, "meta_batch": 2, "val_every": 4, "val_tasks": 4}}
    config = RunConfig.from_dict(raw)
    fit(config, tmp_path / "run")
    model = load_run(tmp_path / "run").learner
    from hypermeta import SplitHyperNet

    assert isinstance(model.hypernet, SplitHyperNet) and model.hypernet.detach
    groups = _param_groups(model, [p for p in model.parameters()], config)
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(0.1 * config.train.lr)
    assert {id(p) for p in groups[1]["params"]} == {
        id(p) for p in model.hypernet.side_parameters()}
    bad = {**raw, "gates": {"enabled": True, "detach": True}}
    with pytest.raises(ConfigError, match="need gates.separate_head"):
        RunConfig.from_dict(bad)


def test_distillation_pulls_the_gated_student_towards_its_teacher(tmp_path):
    from hypermeta.config import RunConfig
    from hypermeta.runs import load_run
    from hypermeta.train import fit

    def raw(gated, distill=None, weight=0.0):
        gates = {"enabled": gated, "sparsity": 0.05 if gated else 0.0}
        if distill:
            gates.update(distill_from=str(distill), distill_weight=weight)
        return RunConfig.from_dict({
            "method": "hypernet", "tasks": {"name": "sinusoid", "shots": 5},
            "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [16]},
            "encoder": {"kind": "set", "dim": 8, "hidden": 16}, "hypernet": {"hidden": [16]},
            "gates": gates, "train": {"steps": 40, "meta_batch": 4, "val_every": 40,
                                      "val_tasks": 4, "lr": 3e-3}})

    fit(raw(False), tmp_path / "teacher")
    teacher = load_run(tmp_path / "teacher").learner
    episodes = load_run(tmp_path / "teacher").tasks.fixed_tasks("test", 8)
    gap = {}
    for weight in (0.0, 100.0):
        fit(raw(True, tmp_path / "teacher", weight), tmp_path / f"w{weight}")
        student = load_run(tmp_path / f"w{weight}").learner
        with torch.no_grad():
            gap[weight] = float((student.predict(episodes) - teacher.predict(episodes))
                                .pow(2).mean())
    assert gap[100.0] < 0.7 * gap[0.0], gap
