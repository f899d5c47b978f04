"""Export a generated text classifier so that raw text goes in: MiniLM (with any generated LoRA
merged) + pooling + the task's generated head, as safetensors + JSON and ONNX, with the
tokenizer files beside it; a generated LoRA also as a PEFT adapter for the same MiniLM.

Folder layout written by ``export_text_classifier``::

    config.json                  what the classifier is (first_layer, max_length, labels, ...)
    model.safetensors            every weight (load_text_classifier rebuilds the module)
    model.onnx                   input_ids, attention_mask [N, L] int64 -> logits [N, ways]
    tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json, bert_config.json
    adapter/                     (LoRA runs) adapter_config.json + adapter_model.safetensors
    head.safetensors             (LoRA runs) the generated head, for use with the adapter
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypermeta.files import atomic_write_bytes, atomic_write_json
from hypermeta.text import NUM_LAYERS, MiniLMTop, minilm_path

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
FORMAT = "hypermeta-text-classifier/1"


class SentenceTop(nn.Module):
    """Token states ``[N, L, 384]`` (zero rows = padding) -> mean pooling -> L2 normalisation ->
    a network over sentence embeddings (e.g. a generated head)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor) -> Tensor:
        weight = (x.abs().sum(-1, keepdim=True) > 0).to(x.dtype)
        pooled = (x * weight).sum(1) / weight.sum(1).clamp_min(1e-9)
        out: Tensor = self.network(F.normalize(pooled, dim=-1))
        return out


class TextClassifier(nn.Module):
    """``input_ids, attention_mask [N, L]`` -> logits: MiniLM's embeddings and layers
    ``0..first_layer-1`` (frozen, as trained), then ``top`` on the token states with padding
    rows zeroed (a materialised ``MiniLMTop`` with merged LoRA, or ``SentenceTop``).

    Arguments:
        bert: a ``transformers`` BertModel (its layers from ``first_layer`` on are unused).
        top: the task's network over token states.
        first_layer: how many MiniLM layers run before ``top``.
    """

    def __init__(self, bert: Any, top: nn.Module, first_layer: int) -> None:
        super().__init__()
        self.embeddings: nn.Module = bert.embeddings
        self.layers = nn.ModuleList(bert.encoder.layer[:first_layer])
        self.top = top
        self.first_layer = first_layer

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        h = self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        mask = attention_mask.to(h.dtype)
        bias = (1.0 - mask)[:, None, None, :] * torch.finfo(h.dtype).min
        for layer in self.layers:
            out = layer(h, attention_mask=bias)
            h = out[0] if isinstance(out, tuple) else out
        result: Tensor = self.top(h * mask[..., None])
        return result


def _bert(folder: Path) -> nn.Module:
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    config._attn_implementation = "eager"  # plain ops, exportable to ONNX
    model: nn.Module = transformers.AutoModel.from_pretrained(str(folder), config=config,
                                                              local_files_only=True)
    return model.eval()


def text_classifier(network: nn.Module, tasks: Any) -> TextClassifier:
    """The raw-text classifier of one generated network of a text run (``tasks`` is the run's
    ``WordNetTasks``-like family: it says whether inputs are sentence embeddings or token
    states after a layer)."""
    inputs = getattr(tasks, "text_inputs", None)
    if inputs is None:
        raise ValueError(f"the {getattr(tasks, 'name', '?')!r} tasks are not text tasks (no "
                         "text_inputs); export them with `hypermeta export --format onnx`")
    bert = _bert(minilm_path(inputs.get("model_path")))
    if inputs["inputs"] == "sentence":
        return TextClassifier(bert, SentenceTop(copy.deepcopy(network)), NUM_LAYERS).eval()
    if not isinstance(network, MiniLMTop):
        raise ValueError("token-state text tasks export a minilm_top target; got "
                         f"{type(network).__name__}")
    return TextClassifier(bert, copy.deepcopy(network), network.first_layer).eval()


def peft_adapter(network: MiniLMTop, spec_names: list[str], params: dict[str, Tensor],
                 rank: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(adapter_config, tensors)`` in PEFT's LoRA format for MiniLM (scaling
    ``lora_alpha / r = 1``, as hypermeta's ``W + B A``), from ONE task's generated LoRA
    ``params`` (``layers.{i}.{path}.lora_a [r, in]`` / ``lora_b [out, r]``)."""
    if "keep" in network.config:
        raise ValueError("this MiniLMTop was pruned by its gates (fewer layers, heads or "
                         "units than MiniLM), which a PEFT adapter cannot express; export the "
                         "merged classifier (without the adapter) instead")
    tensors: dict[str, Tensor] = {}
    modules: set[str] = set()
    layers: set[int] = set()
    for name in spec_names:
        head, _, leaf = name.rpartition(".")
        if leaf not in ("lora_a", "lora_b") or not head.startswith("layers."):
            raise ValueError(f"{name} is not a LoRA factor of a MiniLM layer")
        _, index, path = head.split(".", 2)
        layer = network.first_layer + int(index)
        layers.add(layer)
        modules.add(path.rsplit(".", 1)[-1])
        suffix = "lora_A" if leaf == "lora_a" else "lora_B"
        key = f"base_model.model.encoder.layer.{layer}.{path}.{suffix}.weight"
        tensors[key] = params[name].detach().float().contiguous()
    config = {"peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "r": rank,
              "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none",
              "target_modules": sorted(modules), "layers_to_transform": sorted(layers),
              "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
              "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
              "modules_to_save": None}
    return config, tensors


def export_text_classifier(network: nn.Module, tasks: Any, folder: str | Path, *,
                           content_id: str | None = None, labels: list[str] | None = None,
                           lora: tuple[list[str], dict[str, Tensor], int] | None = None,
                           onnx: bool = True) -> Path:
    """Write one task's raw-text classifier to ``folder`` (see the module docstring).

    Arguments:
        network: the task's generated network (``HyperModel.generate(episode)[0]``).
        tasks: the run's task family (``text_inputs`` says what the network reads).
        folder: output folder (created; files written atomically).
        content_id: the checkpoint it came from.
        labels: a name per output class (e.g. the task's class descriptions).
        lora: ``(spec names, one task's params, rank)`` of a generated LoRA, also written as a
            PEFT adapter in ``folder/adapter``.
        onnx: also write ``model.onnx`` (needs the ``export`` extra).
    """
    from safetensors.torch import save

    from hypermeta.export import _onnx, _onnx_available

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    classifier = text_classifier(network, tasks)
    source = minilm_path(tasks.text_inputs.get("model_path"))
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    shutil.copyfile(source / "config.json", folder / "bert_config.json")
    state = {k: v.detach().contiguous() for k, v in classifier.state_dict().items()}
    atomic_write_bytes(folder / "model.safetensors", save(state))
    config = {"format": FORMAT, "first_layer": classifier.first_layer,
              "inputs": tasks.text_inputs["inputs"],
              "max_length": tasks.text_inputs.get("max_length"),
              "top": getattr(network, "config", None), "labels": labels,
              "content_id": content_id}
    atomic_write_json(folder / "config.json", config)
    if lora is not None:
        if not isinstance(network, MiniLMTop):
            raise ValueError("a PEFT adapter needs a minilm_top target")
        names, params, rank = lora
        adapter_config, tensors = peft_adapter(network, names, params, rank)
        atomic_write_json(folder / "adapter" / "adapter_config.json", adapter_config)
        atomic_write_bytes(folder / "adapter" / "adapter_model.safetensors", save(tensors))
        head = {k: v.detach().contiguous() for k, v in network.head.state_dict().items()}
        atomic_write_bytes(folder / "head.safetensors", save(head))
    if onnx:
        _onnx_available()
        tokens = tokenize(folder, ["an example sentence", "another one, a bit longer"])
        batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2)
        dynamic = ({0: batch, 1: length}, {0: batch, 1: length})
        _onnx(classifier, (tokens["input_ids"], tokens["attention_mask"]),
              folder / "model.onnx", dynamic, names=["input_ids", "attention_mask"])
    return folder


def tokenize(folder: str | Path, texts: list[str]) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` of ``texts`` by the tokenizer files in ``folder``
    (truncated at the exported ``max_length`` when the classifier records one)."""
    import transformers

    folder = Path(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    config = json.loads((folder / "config.json").read_text()) \
        if (folder / "config.json").is_file() else {}
    limit = config.get("max_length") or 256
    out = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def load_text_classifier(folder: str | Path) -> TextClassifier:
    """Rebuild an exported classifier from ``model.safetensors`` + ``config.json`` (the
    tokenizer files beside them turn texts into its inputs: ``tokenize``)."""
    import safetensors.torch
    import transformers

    from hypermeta.networks import build_network

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{folder} is not a hypermeta text classifier (format "
                         f"{config.get('format')!r})")
    bert_config = transformers.AutoConfig.from_pretrained(str(folder / "bert_config.json"))
    bert_config._attn_implementation = "eager"
    bert = transformers.AutoModel.from_config(bert_config)  # type: ignore[no-untyped-call]
    top_config = config["top"]
    if top_config is None:
        raise ValueError(f"{folder} records no architecture for its top network")
    top = build_network(top_config)
    if config["inputs"] == "sentence":
        top = SentenceTop(top)
    classifier = TextClassifier(bert, top, int(config["first_layer"]))
    classifier.load_state_dict(safetensors.torch.load_file(str(folder / "model.safetensors")))
    return classifier.eval()
