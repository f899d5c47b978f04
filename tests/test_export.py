import json

import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from hypermeta import (
    MLP,
    Conv4,
    Episode,
    FeatureEncoder,
    FunctionalTarget,
    GRUNet,
    HyperModel,
    MLPHyperNet,
    SetEncoder,
    TaskEmbedding,
)
from hypermeta.export import export_generator, export_network, load_safetensors_network

NETS = {
    "mlp": (lambda: MLP(2, 3, hidden=(16,)), (2,)),
    "conv4": (lambda: Conv4(hidden=8), (1, 28, 28)),
    "gru": (lambda: GRUNet(2, 8, 3), (6, 2)),
}


def generated(name):
    build, x_shape = NETS[name]
    net = build()
    target = FunctionalTarget(net)
    model = HyperModel(TaskEmbedding(3, 8), MLPHyperNet(target.spec, 8), target)
    episode = Episode(torch.zeros(1, 0, *x_shape), torch.zeros(1, 0, 3),
                      torch.zeros(1, 1, *x_shape), descriptor=torch.tensor([1]))
    return model.generate(episode)[0].eval(), net.config, x_shape


def onnx_run(path, *inputs):
    session = ort.InferenceSession(str(path))
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])


@pytest.mark.parametrize("name", sorted(NETS))
def test_exported_networks_equal_the_in_memory_model(tmp_path, name):
    module, config, x_shape = generated(name)
    example = torch.randn(4, *x_shape)
    export_network(module, tmp_path / "m.pt2", "pt2", example=example)
    export_network(module, tmp_path / "m.onnx", "onnx", example=example)
    export_network(module, tmp_path / "m.safetensors", "safetensors", example=example,
                   architecture=config)
    loaded = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert json.loads((tmp_path / "m.json").read_text())["architecture"] == config
    rebuilt = load_safetensors_network(tmp_path / "m.safetensors")
    assert set(load_file(str(tmp_path / "m.safetensors"))) == set(module.state_dict())
    for batch in (1, 7):  # the batch dimension is dynamic
        x = torch.randn(batch, *x_shape)
        with torch.no_grad():
            expected = module(x)
            torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(rebuilt(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(onnx_run(tmp_path / "m.onnx", x), expected, rtol=1e-5,
                                   atol=1e-5)


def test_generator_onnx_matches_for_support_sets_of_any_size(tmp_path):
    target = FunctionalTarget(MLP(1, 1, hidden=(8,)))
    model = HyperModel(SetEncoder(1, 1, 16, hidden=16), MLPHyperNet(target.spec, 16),
                       target).eval()
    export_generator(model, tmp_path / "gen.onnx", (torch.randn(2, 5, 1), torch.randn(2, 5, 1)))
    layout = json.loads((tmp_path / "gen.json").read_text())
    assert [p["name"] for p in layout["params"]] == list(target.spec.names)
    for tasks, shots in ((1, 3), (4, 10)):
        sx, sy = torch.randn(tasks, shots, 1), torch.randn(tasks, shots, 1)
        with torch.no_grad():
            expected = target.spec.flatten(model.params(Episode(sx, sy, sx[:, :1])))
        torch.testing.assert_close(onnx_run(tmp_path / "gen.onnx", sx, sy), expected,
                                   rtol=1e-5, atol=1e-5)


def test_generator_onnx_for_feature_descriptors(tmp_path):
    target = FunctionalTarget(MLP(1, 1, hidden=(8,)))
    model = HyperModel(FeatureEncoder(2, 8), MLPHyperNet(target.spec, 8), target).eval()
    export_generator(model, tmp_path / "gen.onnx", (torch.randn(2, 2),))
    features = torch.randn(5, 2)
    with torch.no_grad():
        expected = target.spec.flatten(model.hypernet(model.encoder(
            Episode(features[:, None], features[:, None], features[:, None],
                    descriptor=features))))
    torch.testing.assert_close(onnx_run(tmp_path / "gen.onnx", features), expected,
                               rtol=1e-5, atol=1e-5)


def test_bad_format_and_string_encoders_are_refused(tmp_path):
    from hypermeta import HashedLabelEncoder

    module, _, x_shape = generated("mlp")
    with pytest.raises(ValueError, match="format must be one of"):
        export_network(module, tmp_path / "x", "tflite", example=torch.randn(2, *x_shape))
    target = FunctionalTarget(MLP(1, 1))
    model = HyperModel(HashedLabelEncoder(8), MLPHyperNet(target.spec, 8), target)
    with pytest.raises(TypeError, match="string descriptors"):
        export_generator(model, tmp_path / "g.onnx", (torch.zeros(1),))
    assert not list(tmp_path.iterdir())
