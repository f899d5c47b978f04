import functools
import gc
import warnings
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hypermeta import (
    MLP,
    Conv4,
    FunctionalTarget,
    GRUNet,
    LSTMNet,
    MLPHyperNet,
    ResMLP,
    TransformerNet,
    build_network,
)
from hypermeta.parts import Part, register_placeholder
from hypermeta.spec import Init, ParamSpec
from tests.helpers import random_params, task

T = 3


class UserNet(nn.Module):
    """A user's own module: conv + norm + two heads, nothing hypermeta-specific."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = nn.LayerNorm([4, 6, 6])
        self.head = nn.Linear(4 * 36, 3)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


TARGETS = {
    "mlp": (lambda: MLP(2, 1, hidden=(16, 16)), (5, 2)),
    "conv4": (lambda: Conv4(hidden=8), (4, 1, 28, 28)),
    "gru": (lambda: GRUNet(2, 8, 3), (4, 6, 2)),
    "lstm": (lambda: LSTMNet(2, 8, 3), (4, 6, 2)),
    "transformer": (lambda: TransformerNet(2, 3, d_model=8, nhead=2), (4, 6, 2)),
    "user": (UserNet, (4, 2, 6, 6)),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_batched_equals_per_task_loop_and_materialize(name):
    build, x_shape = TARGETS[name]
    target = FunctionalTarget(build()).double()
    assert target._use_vmap
    params = random_params(target, T)
    x = torch.randn(T, *x_shape, dtype=torch.float64)
    batched = target(params, x)
    for i in range(T):
        single = target._call_one(task(params, i), x[i])
        torch.testing.assert_close(batched[i], single, rtol=0, atol=1e-12)
        standalone = target.materialize(task(params, i))
        torch.testing.assert_close(standalone(x[i]), batched[i], rtol=0, atol=1e-12)
        one = {n: p[i:i + 1] for n, p in params.items()}  # T = 1 takes the no-vmap path
        torch.testing.assert_close(target(one, x[i:i + 1])[0], batched[i], rtol=0, atol=1e-12)


def test_dtype_and_device_moves_after_a_forward_are_seen():
    target = FunctionalTarget(Conv4(hidden=8), generate="head.*", batchnorm="frozen")
    params = random_params(target, 2, dtype=torch.float32)
    target(params, torch.randn(2, 3, 1, 28, 28))
    target.double()  # replaces buffers: the cached shared tensors must follow
    out = target({k: v.double() for k, v in params.items()},
                 torch.randn(2, 3, 1, 28, 28, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_generate_selection_by_glob_type_and_mixed():
    net = Conv4(hidden=8)
    head_only = FunctionalTarget(net, generate="head.*")
    assert head_only.spec.names == ("head.weight", "head.bias")
    linears = FunctionalTarget(net, generate=[nn.Linear])
    assert linears.spec.names == ("head.weight", "head.bias")
    mixed = FunctionalTarget(net, generate=[nn.BatchNorm2d, "features.0.0.weight"])
    assert mixed.spec.names[0] == "features.0.0.weight"
    assert all(k in ("weight", "norm_weight", "norm_bias") for k in mixed.spec.kinds)
    everything = FunctionalTarget(net)
    assert everything.spec.numel() == sum(p.numel() for p in net.parameters())
    assert list(everything.parameters()) == []


def test_shared_parameters_are_owned_trainable_and_user_module_unchanged():
    net = MLP(2, 1, hidden=(8,))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    target = FunctionalTarget(net, generate="2.*")
    assert {n for n, _ in target.named_parameters()} == {"module.0.weight", "module.0.bias"}
    params = random_params(target, T, dtype=torch.float32)
    target(params, torch.randn(T, 5, 2)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in target.parameters())
    # the user's module still has all its parameters, untouched
    assert {n for n, _ in net.named_parameters()} == set(before)
    assert all(torch.equal(before[n], p) for n, p in net.named_parameters())


def test_glob_that_selects_nothing_raises_naming_generate():
    with pytest.raises(ValueError, match=r"generate='decoder\.\*' selects no parameter"):
        FunctionalTarget(MLP(2, 1), generate="decoder.*")
    with pytest.raises(TypeError, match="glob strings or nn.Module types"):
        FunctionalTarget(MLP(2, 1), generate=[3])


def test_wrong_task_dim_and_wrong_keys_raise():
    target = FunctionalTarget(MLP(2, 1, hidden=(4,)))
    params = random_params(target, T, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"T = 4 from x"):
        target(params, torch.randn(4, 5, 2))
    with pytest.raises(ValueError, match=r"expects \[2\]"):
        target(params, torch.randn(T, 5, 3))
    params.pop("0.bias")
    with pytest.raises(KeyError, match="missing"):
        target(params, torch.randn(T, 5, 2))


def test_materialized_module_is_standalone_and_round_trips_through_safetensors(tmp_path):
    target = FunctionalTarget(MLP(1, 1, hidden=(8, 8)))
    hyper = MLPHyperNet(target.spec, 4)
    params = hyper(torch.randn(2, 4))
    module = target.materialize(task(params, 0))
    assert all(p.is_leaf and p.grad_fn is None and p.requires_grad for p in module.parameters())
    ref = weakref.ref(hyper)
    del hyper, params
    gc.collect()
    assert ref() is None, "the materialised module keeps the hypernetwork alive"
    path = tmp_path / "task.safetensors"
    save_file(module.state_dict(), str(path))
    rebuilt = build_network(module.config)
    rebuilt.load_state_dict(load_file(str(path)))
    x = torch.randn(7, 1)
    assert torch.equal(rebuilt(x), module(x))


def test_batchnorm_batch_mode_uses_each_tasks_own_statistics():
    target = FunctionalTarget(Conv4(hidden=8), batchnorm="batch").double()
    params = random_params(target, 2)
    x = torch.randn(2, 4, 1, 28, 28, dtype=torch.float64)
    out = target(params, x)
    x_other = x.clone()
    x_other[1] *= 5  # changing task 1's batch must not move task 0's output
    torch.testing.assert_close(target(params, x_other)[0], out[0], rtol=0, atol=1e-12)
    target.eval()  # the MAML convention: batch statistics in evaluation too
    torch.testing.assert_close(target(params, x), out, rtol=0, atol=1e-12)


def test_batchnorm_frozen_mode_uses_running_statistics_in_train_and_eval():
    net = Conv4(hidden=8).double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    target = FunctionalTarget(net, generate="head.*", batchnorm="frozen").train()
    params = random_params(target, 2)
    x = torch.randn(2, 4, 1, 28, 28, dtype=torch.float64)
    out = target(params, x)
    reference = target.materialize(task(params, 0)).eval()
    torch.testing.assert_close(out[0], reference(x[0]), rtol=0, atol=1e-12)
    # per-task loop equals the batch, and running statistics never change
    torch.testing.assert_close(out[1], target._call_one(task(params, 1), x[1]), rtol=0, atol=1e-12)
    bn = target.module.features[0][1]
    assert not bn.training
    assert torch.equal(bn.running_mean, net.features[0][1].running_mean)


class GRUUser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(2, 4, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_nn_gru_falls_back_to_a_loop_with_one_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        target = FunctionalTarget(GRUUser()).double()
        params = random_params(target, T)
        x = torch.randn(T, 5, 6, 2, dtype=torch.float64)
        out = target(params, x)
        target(params, x)
    assert len([w for w in caught if "per-task Python loop" in str(w.message)]) == 1
    for i in range(T):
        torch.testing.assert_close(target.materialize(task(params, i))(x[i]), out[i])


class Square(torch.autograd.Function):
    """A custom op with no vmap rule: vmap raises, the target must fall back."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class SquareNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x):
        return Square.apply(self.linear(x))


def test_op_without_vmap_rule_falls_back_once_and_is_correct():
    target = FunctionalTarget(SquareNet())
    params = random_params(target, T, dtype=torch.float32)
    x = torch.randn(T, 5, 2)
    with pytest.warns(RuntimeWarning, match="vmap failed"):
        out = target(params, x)
    assert not target._use_vmap
    for i in range(T):
        torch.testing.assert_close(target.materialize(task(params, i))(x[i]), out[i])


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_lowrank_linear_never_builds_task_weight_matrices_and_merges_exactly():
    net = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))
    target = FunctionalTarget(net, generate="0.weight", adapter="lowrank", rank=2).double()
    assert target.spec.names == ("0.lora_a", "0.lora_b")
    params = random_params(target, 16)
    x = torch.randn(16, 8, 256, dtype=torch.float64)
    with MaxNumel() as probe:
        out = target(params, x)
    assert probe.largest < 256 * 256 * 16 // 4  # never T full [256, 256] deltas
    w0 = target.module[0].weight
    for i in range(16):
        full = w0 + params["0.lora_b"][i] @ params["0.lora_a"][i]
        hidden = torch.relu(x[i] @ full.T + target.module[0].bias)
        expected = target.module[2](hidden)
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(target.materialize(task(params, i))(x[i]), out[i])


@pytest.mark.parametrize("adapter", ["lowrank", "film"])
def test_conv_adapters_match_their_merged_standalone_network(adapter):
    target = FunctionalTarget(Conv4(hidden=8), adapter=adapter, rank=3).double()
    params = random_params(target, 2)
    x = torch.randn(2, 3, 1, 28, 28, dtype=torch.float64)
    out = target(params, x)
    for i in range(2):
        module = target.materialize(task(params, i))
        assert type(module) is Conv4 and not module.features[0][0]._forward_hooks
        torch.testing.assert_close(module(x[i]), out[i], rtol=0, atol=1e-10)


def test_film_on_bias_free_conv_adds_a_bias_when_materialized():
    net = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.Flatten(), nn.Linear(3 * 16, 2))
    target = FunctionalTarget(net, generate="0.*", adapter="film").double()
    params = random_params(target, 2)
    x = torch.randn(2, 4, 1, 6, 6, dtype=torch.float64)
    module = target.materialize(task(params, 1))
    assert module[0].bias is not None
    torch.testing.assert_close(module(x[1]), target(params, x)[1], rtol=0, atol=1e-12)


def test_adapter_without_linear_or_conv_raises():
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d weight"):
        FunctionalTarget(Conv4(hidden=8), generate=[nn.BatchNorm2d], adapter="lowrank")


class OutputBias(Part):
    """A user's own part: a per-task bias added to one layer's output, with an L2 penalty."""

    def __init__(self, layer: str, penalty: float = 0.5) -> None:
        super().__init__()
        self.layer, self.penalty = layer, penalty
        self.name = f"{layer}.task_bias"
        self.handles = []

    def install(self, module):
        layer = module.get_submodule(self.layer)
        register_placeholder(layer, "task_bias")
        self.handles.append(layer.register_forward_hook(functools.partial(self._hook, 1.0)))
        return ParamSpec((self.name,), (torch.Size([layer.out_features]),), ("task_bias",),
                         (1,), (1,), (Init(offset=0.25, std=0.1),))

    def _hook(self, scale, layer, inputs, output):
        return output + scale * layer.get_buffer("task_bias")

    def extra_loss(self, params):
        return self.penalty * params[self.name].pow(2).mean()

    def merge(self, module, params):
        module.get_submodule(self.layer).bias.add_(params[self.name])
        return module


def test_a_user_part_is_generated_batched_per_task_and_materialized_with_its_extra_loss():
    net = MLP(2, 3, hidden=(8,))
    target = FunctionalTarget(net, generate="0.*", parts=[OutputBias("2")]).double()
    plain = FunctionalTarget(net, generate="0.*").double()  # the same network without the part
    assert target.spec.names == ("0.weight", "0.bias", "2.task_bias")
    assert target.spec.inits[-1] == Init(offset=0.25, std=0.1)
    start = target.initial_params()["2.task_bias"]  # one draw of its Init, seeded
    assert start.shape == (3,) and (start - 0.25).abs().max() < 0.5
    hyper = MLPHyperNet(target.spec, 4).double()  # the hypernetwork generates the part's row
    params = hyper(torch.randn(T, 4, dtype=torch.float64))
    assert params["2.task_bias"].shape == (T, 3)
    x = torch.randn(T, 5, 2, dtype=torch.float64)
    out = target(params, x)
    for i in range(T):
        single = target._call_one(task(params, i), x[i])
        torch.testing.assert_close(out[i], single, rtol=0, atol=1e-12)
        without = plain._call_one({n: params[n][i] for n in plain.spec.names}, x[i])
        torch.testing.assert_close(out[i], without + params["2.task_bias"][i])
        torch.testing.assert_close(target.materialize(task(params, i))(x[i]), out[i],
                                   rtol=0, atol=1e-12)
    loss = target.extra_loss(params)
    torch.testing.assert_close(loss, 0.5 * params["2.task_bias"].pow(2).mean())
    loss.backward()
    assert hyper.head.weight.grad.abs().sum() > 0
    assert plain.extra_loss(task(params, 0)) is None


def test_parts_compose_lowrank_user_part_and_gates_and_losses_add_up():
    target = FunctionalTarget(MLP(2, 3, hidden=(16, 12)), generate=[nn.Linear],
                              adapter="lowrank", rank=2, gates=True, gate_sparsity=0.1,
                              parts=[OutputBias("4")]).double().eval()
    assert [type(p).__name__ for p in target.parts] == ["LowRank", "OutputBias", "Gates"]
    params = random_params(target, T)
    x = torch.randn(T, 5, 2, dtype=torch.float64)
    out = target(params, x)
    for i in range(T):
        small = target.materialize(task(params, i))
        torch.testing.assert_close(small(x[i]), out[i], rtol=1e-9, atol=1e-9)
    expected = 0.1 * target.structure_cost(params) + 0.5 * params["4.task_bias"].pow(2).mean()
    torch.testing.assert_close(target.extra_loss(params), expected)


def test_extra_loss_structure_cost_and_network_size():
    net = MLP(2, 3, hidden=(8,))
    numel = sum(p.numel() for p in net.parameters())
    plain = FunctionalTarget(net, generate="2.*")
    params = random_params(plain, T, dtype=torch.float32)
    assert plain.extra_loss(params) is None
    assert plain.structure_cost(params) == 0
    assert plain.network_numel() == numel
    gated = FunctionalTarget(net, gates=True)  # gate_sparsity 0: no extra loss
    params = random_params(gated, T, dtype=torch.float32)
    assert gated.extra_loss(params) is None
    assert 0 < gated.structure_cost(params) < 1
    assert gated.network_numel() == numel
    lowrank = FunctionalTarget(net, generate="0.weight", adapter="lowrank", rank=2)
    assert lowrank.network_numel() == numel
    with pytest.raises(ValueError, match="needs gates=True"):
        FunctionalTarget(net, gate_sparsity=0.5)
    with pytest.raises(TypeError, match="parts= takes"):
        FunctionalTarget(net, parts=[nn.Linear(2, 2)])


def test_parts_set_no_attributes_on_the_users_modules_and_follow_train_eval():
    classes = {cls: set(vars(cls)) for cls in (ResMLP, nn.Linear, nn.Sequential)}
    target = FunctionalTarget(ResMLP(2, 3, 8, (6, 5)), generate=[nn.Linear], adapter="film",
                              gates=True, gate_sparsity=0.1)
    for name, module in target.module.named_modules():
        added = [k for k in vars(module) if k.startswith(("gate", "film", "lora"))]
        assert not added, f"{name or 'root'} has attributes {added}"
    assert {cls: set(vars(cls)) for cls in classes} == classes
    target.eval()
    assert not any(p.training for p in target.parts)
    target.train()
    assert all(p.training for p in target.parts)


@pytest.mark.parametrize("kwargs", [dict(gates=True), dict(adapter="lowrank"),
                                    dict(adapter="film", generate="0.*"),
                                    dict(parts=[OutputBias("2")])],
                         ids=["gates", "lowrank", "film", "user"])
def test_materialize_keeps_the_targets_hooks_and_returns_a_network_without_hooks(kwargs):
    target = FunctionalTarget(MLP(2, 3, hidden=(8,)), **kwargs).double().eval()
    hooks = {n: dict(m._forward_hooks) for n, m in target.module.named_modules()}
    assert any(hooks.values())
    params = random_params(target, T)
    x = torch.randn(T, 5, 2, dtype=torch.float64)
    out = target(params, x)
    net = target.materialize(task(params, 0))
    assert all(not m._forward_hooks for m in net.modules())
    assert not [n for n, _ in net.named_buffers() if n.endswith(("gate", "task_bias"))]
    assert {n: dict(m._forward_hooks) for n, m in target.module.named_modules()} == hooks
    torch.testing.assert_close(target(params, x), out, rtol=0, atol=0)
    torch.testing.assert_close(net(x[0]), out[0], rtol=1e-9, atol=1e-9)


def test_batching_modes_agree_for_a_conv_target():
    from hypermeta import Conv4

    torch.manual_seed(0)
    net = Conv4(in_channels=1, num_classes=5, hidden=8, image_size=16)
    targets = {mode: FunctionalTarget(net, generate="features.*.1.*", batching=mode)
               for mode in ("auto", "vmap", "loop")}
    spec = targets["auto"].spec
    params = {n: (1 + 0.1 * torch.randn(3, *s)).requires_grad_()
              for n, s in zip(spec.names, spec.shapes)}
    x = torch.randn(3, 10, 1, 16, 16)  # >= 8 images a task: auto loops
    outs, grads = {}, {}
    for mode, target in targets.items():  # auto on the CPU: a loop in channels-last format
        out = target(params, x)
        (grads[mode],) = torch.autograd.grad(out.square().sum(), [params[spec.names[0]]])
        outs[mode] = out.detach()
    for mode in ("vmap", "loop"):
        torch.testing.assert_close(outs["auto"], outs[mode], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grads["auto"], grads[mode], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="batching must be"):
        FunctionalTarget(net, batching="threads")
