"""Export generated networks (and the generator itself) as models that load without hypermeta.

Formats: ``safetensors`` (weights + a JSON architecture description, in the file's metadata and
in a ``.json`` beside it), ``pt2`` (``torch.export``; load with ``torch.export.load``), ``onnx``
(the current ``torch.onnx`` exporter; needs the ``export`` extra). The batch dimension is dynamic;
sequence targets are exported for the sequence length of the example input.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hypermeta.encoders import FeatureEncoder, SetEncoder, TaskEmbedding
from hypermeta.files import atomic_write_bytes
from hypermeta.model import HyperModel

Format = Literal["safetensors", "pt2", "onnx"]
FORMATS: tuple[Format, ...] = ("safetensors", "pt2", "onnx")


def _onnx_available() -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export needs the 'export' extra: pip install 'hypermeta[export]'") \
            from None


def export_network(module: nn.Module, path: str | Path, fmt: Format, *, example: Tensor,
                   architecture: dict[str, Any] | None = None,
                   content_id: str | None = None) -> Path:
    """Write one task's standalone network to ``path`` in format ``fmt``.

    Arguments:
        module: the network (e.g. from ``HyperModel.generate``).
        path: output file; written atomically.
        fmt: ``"safetensors"``, ``"pt2"`` or ``"onnx"``.
        example: one input batch ``[N, ...]`` (its batch size is made dynamic).
        architecture: the JSON config of a built-in target (``build_network`` rebuilds it).
        content_id: the checkpoint it came from (recorded with the safetensors format).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    path = Path(path)
    module = module.eval()
    batch_stats = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
                      for m in module.modules())
    meta = {"architecture": architecture, "input_shape": list(example.shape[1:]),
            "format": fmt, "content_id": content_id,
            "batchnorm": "batch" if batch_stats else "running"}
    if fmt == "safetensors":
        import safetensors.torch

        state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        data = safetensors.torch.save(state, metadata={"hypermeta": json.dumps(meta)})
        atomic_write_bytes(path, data)
        atomic_write_bytes(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
        return path
    batch = torch.export.Dim("batch", min=1)
    if fmt == "pt2":
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        return atomic_write_bytes(path, buffer.getvalue())
    _onnx_available()
    return _onnx(module, (example,), path, ({0: batch},))


def _onnx(module: nn.Module, inputs: tuple[Tensor, ...], path: Path, dynamic: Any,
          names: list[str] | None = None) -> Path:
    tmp = path.with_name(f".{path.name}.partial.onnx")
    # the exporter logs one line per optional torchvision op it cannot find: not our concern
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns about optional torchvision ops
        torch.onnx.export(module, inputs, str(tmp), dynamo=True, dynamic_shapes=dynamic,
                          input_names=names, verbose=False, external_data=False)
    tmp.replace(path)
    return path


def load_safetensors_network(path: str | Path) -> nn.Module:
    """Rebuild a built-in network exported as safetensors (+ its JSON): the inverse of
    ``export_network(..., "safetensors")``. (``pt2``/``onnx`` exports load without hypermeta.)"""
    import safetensors

    from hypermeta.networks import build_network

    with safetensors.safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("hypermeta", "{}"))
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    if not meta.get("architecture"):
        raise ValueError(f"{path} records no built-in architecture; rebuild your own module and "
                         "load_state_dict the weights")
    module = build_network(meta["architecture"])
    if meta.get("batchnorm") == "batch":  # per-batch statistics, as the generated network used
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None
    module.load_state_dict(state)
    return module.eval()


class _Generator(nn.Module):
    """Encoder + hypernetwork as one graph -> flat params ``[T, P]`` (spec order)."""

    def __init__(self, model: HyperModel) -> None:
        super().__init__()
        encoder = model.encoder
        if model.class_head is not None:
            raise TypeError("this model generates its head per class from the support set; "
                            "export the generated network of a task (export_network) instead")
        if not isinstance(encoder, (SetEncoder, FeatureEncoder, TaskEmbedding)):
            raise TypeError(f"{type(encoder).__name__} takes string descriptors; export the "
                            "generator of a set, feature or task-id encoder")
        assert model.hypernet is not None  # a model without a class head has one
        self.encoder, self.hypernet = encoder, model.hypernet
        self.spec = model.target.spec

    def _flat(self, episode: Any) -> Tensor:
        return self.spec.flatten(self.hypernet(self.encoder(episode)))


class SetGenerator(_Generator):
    """``support_x [T, S, ...]``, ``support_y [T, S, ...]`` -> params ``[T, P]``."""

    def forward(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        from hypermeta.episodes import Episode

        return self._flat(Episode(support_x, support_y, support_x[:, :1]))


class DescriptorGenerator(_Generator):
    """Task ids ``[T]`` or feature vectors ``[T, F]`` -> params ``[T, P]``."""

    def forward(self, descriptor: Tensor) -> Tensor:
        from hypermeta.episodes import Episode

        placeholder = descriptor[:, None]
        return self._flat(Episode(placeholder, placeholder, placeholder, descriptor=descriptor))


def generator_example(model: HyperModel, tasks: Any) -> tuple[Tensor, ...]:
    """Example inputs of ``GeneratorGraph`` taken from a task family's val set (2 tasks)."""
    episode = tasks.fixed_tasks("val", 2)
    if isinstance(model.encoder, SetEncoder):
        return (episode.support_x, episode.support_y)
    if isinstance(model.encoder, TaskEmbedding):
        return (torch.arange(2) % model.encoder.num_tasks,)
    return (episode.descriptor,)


def export_generator(model: HyperModel, path: str | Path, inputs: tuple[Tensor, ...]) -> Path:
    """The hypernetwork itself (encoder + generator) to ONNX.

    ``inputs`` are example inputs as ``SetGenerator`` or ``DescriptorGenerator`` take them; the
    number of tasks and the support size are dynamic. A JSON beside the file lists the parameter
    names and shapes of the flat output, in order."""
    _onnx_available()
    path = Path(path)
    is_set = isinstance(model.encoder, SetEncoder)
    graph = (SetGenerator(model) if is_set else DescriptorGenerator(model)).eval()
    tasks = torch.export.Dim("tasks", min=1)
    if is_set:
        shots = torch.export.Dim("shots", min=1)
        dynamic: Any = ({0: tasks, 1: shots}, {0: tasks, 1: shots})
        names = ["support_x", "support_y"]
    else:
        dynamic = ({0: tasks},)
        names = ["task_ids" if isinstance(model.encoder, TaskEmbedding) else "features"]
    _onnx(graph, inputs, path, dynamic, names)
    spec = model.target.spec
    layout = {"inputs": names, "output": "params [T, P]",
              "params": [{"name": n, "shape": list(s)} for n, s in zip(spec.names, spec.shapes)]}
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(layout, indent=2) + "\n").encode())
    return path
