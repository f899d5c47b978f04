"""Built-in target networks, each rebuilt from a JSON-able config (no pickling).

Every built-in is vmap-friendly (plain matmuls, no ``nn.GRU``/``nn.LSTM``/fused attention) and
keeps its constructor arguments in ``.config`` so ``build_network(net.config)`` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypermeta.gates import GateSite as GateSite  # re-exported: hypermeta.networks.GateSite
from hypermeta.registry import TARGETS

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU,
}


def _positive(**sizes: int | Sequence[int]) -> None:
    """Refuse sizes that are not positive integers, naming each (a config's ``hidden: [-3]``
    is an error here, not a tensor-creation traceback)."""
    bad = {}
    for name, value in sizes.items():
        values = list(value) if isinstance(value, Sequence) else [value]
        if not values and name != "hidden" or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            bad[name] = value
    if bad:
        raise ValueError("sizes must be positive integers; got "
                         + ", ".join(f"{k}={v!r}" for k, v in bad.items()))


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Fully connected network ``in_dim -> hidden... -> out_dim``; input ``[N, in_dim]``.

    Example: ``MLP(1, 1, hidden=(40, 40))`` is the 1-40-40-1 sinusoid regressor of MAML.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (40, 40),
                 activation: str = "relu") -> None:
        _positive(in_dim=in_dim, out_dim=out_dim, hidden=hidden)
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), _activation(activation)]
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)
        self.config: dict[str, Any] = {"name": "mlp", "in_dim": in_dim, "out_dim": out_dim,
                       "hidden": list(hidden), "activation": activation}
        self.input_shape = (in_dim,)

    def _linears(self) -> list[tuple[int, nn.Linear]]:
        return [(i, m) for i, m in enumerate(self) if isinstance(m, nn.Linear)]

    def gate_sites(self) -> list[GateSite]:
        """Hidden units: the output of every Linear but the last (activation(0) = 0)."""
        return [GateSite(str(i), m.out_features, -1) for i, m in self._linears()[:-1]]

    @torch.no_grad()
    def pruned(self, masks: dict[str, Tensor]) -> MLP:
        """A smaller MLP without the hidden units whose mask is False (same outputs)."""
        linears = self._linears()
        keep = {str(i): masks[str(i)].bool() for i, _ in linears[:-1]}
        hidden = [int(k.sum()) for k in keep.values()]
        small = MLP(self.config["in_dim"], self.config["out_dim"], hidden,
                    self.config["activation"]).to(linears[0][1].weight)
        rows: Tensor | None = None  # input features kept by the previous layer
        for (i, layer), (_, new) in zip(linears, small._linears()):
            weight: Tensor = layer.weight
            bias: Tensor = layer.bias
            if rows is not None:
                weight = weight[:, rows]
            out = keep.get(str(i))
            if out is not None:
                weight, bias = weight[out], bias[out]
            new.weight.copy_(weight)
            new.bias.copy_(bias)
            rows = out
        return small.train(self.training)


class ResMLP(nn.Module):
    """Residual MLP: ``h = act(stem(x))``, then per block ``h = h + W2 act(W1 h)``, then a
    linear head; input ``[N, in_dim]``. ``hidden`` lists each block's inner width.

    Its gate sites are each block's inner units and each whole block (a closable site: a
    closed block is removed and the identity path remains), so a task can get fewer, narrower
    blocks.

    Example: ``ResMLP(1, 1, width=64, hidden=(64, 64, 64))``.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 64,
                 hidden: Sequence[int] = (64, 64, 64), activation: str = "relu") -> None:
        super().__init__()
        _positive(in_dim=in_dim, out_dim=out_dim, width=width, hidden=hidden)
        self.stem = nn.Sequential(nn.Linear(in_dim, width), _activation(activation))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, int(h)), _activation(activation),
                          nn.Linear(int(h), width)) for h in hidden)
        self.head = nn.Linear(width, out_dim)
        self.config: dict[str, Any] = {"name": "resmlp", "in_dim": in_dim, "out_dim": out_dim,
                                       "width": width, "hidden": [int(h) for h in hidden],
                                       "activation": activation}
        self.input_shape = (in_dim,)

    def gate_sites(self) -> list[GateSite]:
        """Every block's inner units, then every whole block (closable)."""
        units = [GateSite(f"blocks.{i}.0", int(self.config["hidden"][i]), -1)
                 for i in range(len(self.blocks))]
        return units + [GateSite(f"blocks.{i}", 1, -1, closable=True)
                        for i in range(len(self.blocks))]

    @torch.no_grad()
    def pruned(self, masks: dict[str, Tensor]) -> ResMLP:
        """A smaller ResMLP without the closed blocks and closed inner units (same outputs)."""
        kept = [i for i in range(len(self.blocks)) if bool(masks[f"blocks.{i}"].any())]
        inner = {i: masks[f"blocks.{i}.0"].bool() for i in kept}
        cfg = self.config
        small = ResMLP(cfg["in_dim"], cfg["out_dim"], cfg["width"],
                       [int(inner[i].sum()) for i in kept], cfg["activation"])
        small = small.to(self.head.weight)
        small.stem.load_state_dict(self.stem.state_dict())
        small.head.load_state_dict(self.head.state_dict())
        for new_block, i in zip(small.blocks, kept):
            old, new = cast(nn.Sequential, self.blocks[i]), cast(nn.Sequential, new_block)
            keep = inner[i]
            first, last = cast(nn.Linear, old[0]), cast(nn.Linear, old[2])
            new_first, new_last = cast(nn.Linear, new[0]), cast(nn.Linear, new[2])
            new_first.weight.copy_(first.weight[keep])
            new_first.bias.copy_(first.bias[keep])
            new_last.weight.copy_(last.weight[:, keep])
            new_last.bias.copy_(last.bias)
        return small.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        out: Tensor = self.head(h)
        return out


class Conv4(nn.Module):
    """The conv-4 few-shot backbone (Vinyals et al. 2016) plus a linear classifier head.

    Four blocks of 3x3 conv (``hidden`` channels), BatchNorm, ReLU, 2x2 max-pool; input
    ``[N, in_channels, image_size, image_size]``, output ``[N, num_classes]`` logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 5, hidden: int = 64,
                 image_size: int = 28, channels: Sequence[int] | None = None) -> None:
        super().__init__()
        _positive(in_channels=in_channels, num_classes=num_classes, hidden=hidden,
                  image_size=image_size)
        widths = [hidden] * 4 if channels is None else [int(c) for c in channels]
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"channels must be 4 positive widths, got {channels!r}")
        blocks: list[nn.Module] = []
        previous, size = in_channels, image_size
        for width in widths:
            blocks.append(nn.Sequential(
                nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width),
                nn.ReLU(), nn.MaxPool2d(2),
            ))
            previous, size = width, size // 2
        if size < 1:
            raise ValueError(f"image_size={image_size} is too small for 4 max-pools (need >= 16)")
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(widths[-1] * size * size, num_classes)
        self.final_size = size
        self.config: dict[str, Any] = {"name": "conv4", "in_channels": in_channels,
                                       "num_classes": num_classes,
                       "hidden": hidden, "image_size": image_size}
        if channels is not None:
            self.config["channels"] = widths
        self.input_shape = (in_channels, image_size, image_size)

    def _blocks(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        return [(cast(nn.Conv2d, block[0]), cast(nn.BatchNorm2d, block[1]))
                for block in cast(list[nn.Sequential], list(self.features))]

    def gate_sites(self) -> list[GateSite]:
        """Channels of every block, gated after BatchNorm (so a closed channel is exactly 0)."""
        return [GateSite(f"features.{i}.1", bn.num_features, 1)
                for i, (_, bn) in enumerate(self._blocks())]

    @torch.no_grad()
    def pruned(self, masks: dict[str, Tensor]) -> Conv4:
        """A smaller Conv4 without the channels whose mask is False (same outputs)."""
        keep = [masks[f"features.{i}.1"].bool() for i in range(4)]
        cfg = self.config
        small = Conv4(cfg["in_channels"], self.head.out_features, cfg["hidden"], cfg["image_size"],
                      channels=[int(k.sum()) for k in keep]).to(self.head.weight)
        previous: Tensor | None = None
        for (conv, bn), (new_conv, new_bn), out in zip(self._blocks(), small._blocks(), keep):
            weight = conv.weight[out] if previous is None else conv.weight[out][:, previous]
            new_conv.weight.copy_(weight)
            cast(Tensor, new_conv.bias).copy_(cast(Tensor, conv.bias)[out])
            new_bn.weight.copy_(bn.weight[out])
            new_bn.bias.copy_(bn.bias[out])
            if bn.running_mean is None:  # per-batch statistics, as the source used
                new_bn.track_running_stats = False
                new_bn.running_mean = new_bn.running_var = new_bn.num_batches_tracked = None
            else:
                cast(Tensor, new_bn.running_mean).copy_(bn.running_mean[out])
                cast(Tensor, new_bn.running_var).copy_(cast(Tensor, bn.running_var)[out])
            previous = out
        assert previous is not None
        area = self.final_size ** 2  # flatten is channel-major: feature = c * area + s
        columns = previous.repeat_interleave(area)
        small.head.weight.copy_(self.head.weight[:, columns])
        small.head.bias.copy_(self.head.bias)
        return small.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x).flatten(1))
        return out


class ItemMLP(nn.Module):
    """A rating scorer over items: ``x [N, in_dim]`` = item features and, in the last column,
    the item id divided by ``num_items`` (``tasks.movielens`` builds them); a shared embedding
    of the id joins the features, and an MLP maps them to a score ``[N, out_dim]``. Generate
    the MLP (``generate: "mlp.*"``) and keep the embedding shared across users. With
    ``base_column`` the score is a residual over that feature plus ``offset`` (the movielens
    rows hold the item's mean rating - 3.5 in column -3: ``base_column: -3, offset: 3.5``
    starts every model at the item-mean predictor)."""

    def __init__(self, in_dim: int, num_items: int, embed_dim: int = 16,
                 hidden: Sequence[int] = (64, 64), out_dim: int = 1,
                 base_column: int | None = None, offset: float = 0.0) -> None:
        super().__init__()
        _positive(in_dim=in_dim, num_items=num_items, out_dim=out_dim)
        if embed_dim < 0:
            raise ValueError(f"embed_dim must be >= 0 (0: no item embedding); got {embed_dim}")
        if in_dim < 2:
            raise ValueError(f"in_dim must be >= 2 (features and the id column); got {in_dim}")
        if base_column is not None and (not -in_dim <= base_column < in_dim
                                        or base_column % in_dim == in_dim - 1):
            raise ValueError(f"base_column {base_column} is not one of the {in_dim - 1} "
                             "feature columns (the last column is the item id)")
        self.num_items, self.base_column, self.offset = num_items, base_column, offset
        # ids 1..num_items (0: none); embed_dim 0 = features only
        self.embedding = nn.Embedding(num_items + 1, embed_dim) if embed_dim else None
        self.mlp = MLP(in_dim - 1 + embed_dim, out_dim, hidden)
        self.config = {"name": "item_mlp", "in_dim": in_dim, "num_items": num_items,
                       "embed_dim": embed_dim, "hidden": list(hidden), "out_dim": out_dim,
                       "base_column": base_column, "offset": offset}
        self.input_shape = (in_dim,)

    def forward(self, x: Tensor) -> Tensor:
        features = x[..., :-1]
        if self.embedding is not None:
            ids = torch.round(x[..., -1] * self.num_items).long().clamp(0, self.num_items)
            features = torch.cat([features, self.embedding(ids)], dim=-1)
        out: Tensor = self.mlp(features)
        out = out + self.offset
        if self.base_column is not None:  # a residual over a feature (e.g. the item mean)
            column = self.base_column % x.shape[-1]
            out = out + x[..., column: column + 1]
        return out


class _Recurrent(nn.Module):
    """Shared body of the GRU/LSTM targets: gates as two Linear maps, stepped over time."""

    gates: int
    kind: str

    def __init__(self, in_dim: int, hidden: int, out_dim: int, output: str = "last") -> None:
        super().__init__()
        if output not in ("last", "sequence"):
            raise ValueError(f"output must be 'last' or 'sequence', got {output!r}")
        _positive(in_dim=in_dim, hidden=hidden, out_dim=out_dim)
        self.hidden, self.output = hidden, output
        self.input_map = nn.Linear(in_dim, self.gates * hidden)
        self.hidden_map = nn.Linear(hidden, self.gates * hidden)
        self.head = nn.Linear(hidden, out_dim)
        self.config = {"name": self.kind, "in_dim": in_dim, "hidden": hidden,
                       "out_dim": out_dim, "output": output}

    def forward(self, x: Tensor) -> Tensor:
        # x [N, L, in_dim] -> [N, out_dim] ("last") or [N, L, out_dim] ("sequence")
        h = x.new_zeros(x.shape[0], self.hidden)
        c = x.new_zeros(x.shape[0], self.hidden)
        gx = self.input_map(x)  # (N, L, G*H) all input projections at once
        outputs = []
        for t in range(x.shape[1]):
            h, c = self.step(gx[:, t], h, c)
            outputs.append(h)
        seq = h if self.output == "last" else torch.stack(outputs, dim=1)
        out: Tensor = self.head(seq)
        return out

    def step(self, gx: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class GRUNet(_Recurrent):
    """Single-layer GRU (same equations as ``nn.GRU``) written with plain matmuls, plus a head."""

    gates, kind = 3, "gru"

    def step(self, gx: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        gh = self.hidden_map(h)
        xr, xz, xn = gx.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, c


class LSTMNet(_Recurrent):
    """Single-layer LSTM (same equations as ``nn.LSTM``) written with plain matmuls, plus a head."""

    gates, kind = 4, "lstm"

    def step(self, gx: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        i, f, g, o = (gx + self.hidden_map(h)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class _Block(nn.Module):
    """Pre-norm transformer encoder block with explicit attention (vmap-friendly).

    ``heads`` (an identity on ``[N, heads, L, head_dim]``) and ``ff1`` (the feed-forward units)
    are gate sites; ``delta`` (an identity on the block's whole residual update ``out - x``) is
    the closable site that removes the layer. ``head_dim`` defaults to ``d_model // nhead``; a
    pruned block keeps its heads' width with fewer heads."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, head_dim: int | None = None) -> None:
        super().__init__()
        self.nhead = nhead
        self.head_dim = head_dim if head_dim is not None else d_model // nhead
        inner = nhead * self.head_dim
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * inner)
        self.heads = nn.Identity()
        self.proj = nn.Linear(inner, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, dim_ff)
        self.ff2 = nn.Linear(dim_ff, d_model)
        self.delta = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape
        inner = self.nhead * self.head_dim
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        # (N, heads, L, head_dim) each
        q, k, v = (t.reshape(n, length, self.nhead, self.head_dim).transpose(1, 2)
                   for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim ** 0.5, dim=-1)
        mixed = self.heads(att @ v)
        h = x + self.proj(mixed.transpose(1, 2).reshape(n, length, inner))
        h = h + self.ff2(F.gelu(self.ff1(self.norm2(h))))
        out: Tensor = x + self.delta(h - x)
        return out


class TransformerNet(nn.Module):
    """Small transformer encoder, sequences ``[N, L, in_dim]`` -> ``[N, out_dim]`` (mean pool).

    ``nhead`` and ``dim_ff`` may be per-layer lists (a pruned network's layers differ);
    ``head_dim`` defaults to ``d_model // nhead``. Gate sites (``gates=True``): every layer's
    attention heads and feed-forward units, and every whole layer (closable: a closed layer is
    removed, the residual path remains), so a task can get fewer layers and heads.
    """

    def __init__(self, in_dim: int, out_dim: int, d_model: int = 32,
                 nhead: int | Sequence[int] = 2, num_layers: int = 1,
                 dim_ff: int | Sequence[int] = 64, max_len: int = 64,
                 head_dim: int | None = None) -> None:
        super().__init__()
        heads = [nhead] * num_layers if isinstance(nhead, int) else [int(h) for h in nhead]
        ffs = [dim_ff] * num_layers if isinstance(dim_ff, int) else [int(f) for f in dim_ff]
        _positive(in_dim=in_dim, out_dim=out_dim, d_model=d_model, max_len=max_len,
                  nhead=heads or [1], dim_ff=ffs or [1])
        if num_layers < 0 or len(heads) != num_layers or len(ffs) != num_layers:
            raise ValueError(f"nhead and dim_ff lists need num_layers={num_layers} entries; got "
                             f"{nhead!r}, {dim_ff!r}")
        if head_dim is None and any(d_model % h for h in heads):
            raise ValueError(f"d_model={d_model} must be divisible by nhead={nhead} (or pass "
                             "head_dim)")
        if head_dim is not None:
            _positive(head_dim=head_dim)
        self.embed = nn.Linear(in_dim, d_model)
        self.position = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        self.blocks = nn.Sequential(*[_Block(d_model, h, f, head_dim)
                                      for h, f in zip(heads, ffs)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, out_dim)
        self.max_len = max_len
        self.config: dict[str, Any] = {
            "name": "transformer", "in_dim": in_dim, "out_dim": out_dim, "d_model": d_model,
            "nhead": nhead if isinstance(nhead, int) else heads, "num_layers": num_layers,
            "dim_ff": dim_ff if isinstance(dim_ff, int) else ffs, "max_len": max_len}
        if head_dim is not None:
            self.config["head_dim"] = head_dim

    def _layers(self) -> list[_Block]:
        return [cast(_Block, b) for b in self.blocks]

    def gate_sites(self) -> list[GateSite]:
        """Every layer's attention heads and feed-forward units, then every whole layer."""
        sites = []
        for i, block in enumerate(self._layers()):
            sites += [GateSite(f"blocks.{i}.heads", block.nhead, 1),
                      GateSite(f"blocks.{i}.ff1", block.ff1.out_features, -1)]
        return sites + [GateSite(f"blocks.{i}.delta", 1, -1, closable=True)
                        for i in range(len(self.blocks))]

    @torch.no_grad()
    def pruned(self, masks: dict[str, Tensor]) -> TransformerNet:
        """A smaller TransformerNet without the closed layers, heads and feed-forward units
        (same outputs)."""
        layers = self._layers()
        kept = [i for i in range(len(layers)) if bool(masks[f"blocks.{i}.delta"].any())]
        heads = {i: masks[f"blocks.{i}.heads"].bool() for i in kept}
        ffs = {i: masks[f"blocks.{i}.ff1"].bool() for i in kept}
        cfg = self.config
        head_dim = layers[0].head_dim if layers else cfg.get("head_dim")
        small = TransformerNet(cfg["in_dim"], cfg["out_dim"], cfg["d_model"],
                               [int(heads[i].sum()) for i in kept], len(kept),
                               [int(ffs[i].sum()) for i in kept], cfg["max_len"],
                               head_dim=head_dim).to(self.head.weight)
        for name in ("embed", "norm", "head"):
            cast(nn.Module, getattr(small, name)).load_state_dict(
                cast(nn.Module, getattr(self, name)).state_dict())
        small.position.copy_(self.position)
        for new, i in zip(small._layers(), kept):
            old = layers[i]
            d = old.head_dim
            cols = torch.arange(old.nhead * d, device=heads[i].device).reshape(old.nhead, d)
            keep = cols[heads[i]].reshape(-1)  # this layer's kept head dimensions
            inner = old.nhead * d
            rows = torch.cat([keep, keep + inner, keep + 2 * inner])  # q, k and v rows
            new.qkv.weight.copy_(old.qkv.weight[rows])
            new.qkv.bias.copy_(old.qkv.bias[rows])
            new.proj.weight.copy_(old.proj.weight[:, keep])
            new.proj.bias.copy_(old.proj.bias)
            new.ff1.weight.copy_(old.ff1.weight[ffs[i]])
            new.ff1.bias.copy_(old.ff1.bias[ffs[i]])
            new.ff2.weight.copy_(old.ff2.weight[:, ffs[i]])
            new.ff2.bias.copy_(old.ff2.bias)
            new.norm1.load_state_dict(old.norm1.state_dict())
            new.norm2.load_state_dict(old.norm2.state_dict())
        return small.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x) + self.position[: x.shape[1]]
        out: Tensor = self.head(self.norm(self.blocks(h)).mean(dim=1))
        return out


for _name, _cls in (("mlp", MLP), ("resmlp", ResMLP), ("conv4", Conv4), ("gru", GRUNet),
                    ("lstm", LSTMNet), ("transformer", TransformerNet), ("item_mlp", ItemMLP)):
    TARGETS.register(_name, _cls)
TARGETS.register_lazy("minilm_top", "hypermeta.text:MiniLMTop")  # needs the 'text' extra


def build_network(config: Mapping[str, Any]) -> nn.Module:
    """Build a registered target (``hypermeta.TARGETS``) from its JSON-able config
    (``{"name": "mlp", ...}``).

    Example:
        >>> net = build_network({"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [40, 40]})
        >>> build_network(net.config).config == net.config
        True
    """
    if not isinstance(config, Mapping) or "name" not in config:
        raise ValueError(f"network config must be a mapping with a 'name'; got {config!r}")
    name = config["name"]
    builder = TARGETS.get(name)
    kwargs = {k: v for k, v in config.items() if k != "name"}
    try:
        net = builder(**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for network {name!r}: {err}") from None
    if not isinstance(net, nn.Module):
        raise TypeError(f"target {name!r} built a {type(net).__name__}, not an nn.Module")
    return net
