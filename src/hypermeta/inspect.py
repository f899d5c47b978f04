"""Look inside a trained hypernetwork: task maps, interpolation, fusion, weight statistics and
support-example influence. Every function returns data (tensors, floats, plain networks);
``hypermeta.report`` draws them.

All of them read a ``HyperModel`` whose encoder turns an episode into an embedding ``z`` and
whose hypernetwork turns ``z`` into the generated parameters. Interpolation also needs the
generated parameters to depend on ``z`` alone, so models with a class or ridge head (whose
rows come from the support features) or with fine-tuning steps are refused there with a
message; fusion takes a per-class head (rows from the parents' support sets, see ``fuse``).

Example:
    >>> model, tasks = run.hypermodel, run.tasks
    >>> test = tasks.fixed_tasks("test", 200)
    >>> m = task_map(model, test, tasks.properties(test))
    >>> path = interpolate(model, test.task(0), test.task(1))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hypermeta.episodes import Episode
from hypermeta.spec import Params


def _model(model: Any) -> Any:
    from hypermeta.model import HyperModel

    if not isinstance(model, HyperModel) or model.encoder is None or model.hypernet is None:
        raise ValueError("inspection needs a HyperModel with an encoder and a hypernetwork "
                         f"(got {type(model).__name__}: a baseline run, or a model that "
                         "generates only a class head)")
    return model


def _z_only(model: Any, what: str) -> None:
    if model.class_head is not None or model.finetune_steps:
        raise ValueError(f"{what} needs parameters that depend on the task embedding alone; "
                         "this model has a class/ridge head (rows from the support features) "
                         "or fine-tuning steps")


@torch.no_grad()
def embed(model: Any, episodes: Episode, batch: int = 100) -> Tensor:
    """The encoder's embedding of each task, ``[T, D]`` (the model's own validation first)."""
    model = _model(model)
    parts = [model.encoder(model.prepare(episodes.slice(i, i + batch)))
             for i in range(0, episodes.num_tasks, batch)]
    return torch.cat(parts).cpu()


def _pca(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scores ``[N, k]``, components ``[k, D]``, explained-variance fractions ``[k]`` and the
    mean ``[D]`` of ``x`` (double precision SVD)."""
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    var = s.square()
    k = min(k, v.shape[0])
    explained = var[:k] / var.sum().clamp_min(1e-30)
    return centred @ v[:k].T, v[:k], explained, mean


@dataclass
class TaskMap:
    """Tasks' embeddings projected to 2-D by PCA.

    Attributes:
        points: ``[T, 2]`` PCA coordinates of ``embeddings``.
        explained: variance fraction of each of the two axes.
        embeddings: the encoder's ``[T, D]`` embeddings the map is made of.
        properties: ``{name: [T]}`` values to colour the points by.
        new_points: ``[N, 2]`` coordinates of the new tasks (``new=``), if any.
        nearest: for each new task, the indices of its ``k`` nearest mapped tasks (in the
            embedding space, not the projection).
    """

    points: Tensor
    explained: Tensor
    embeddings: Tensor
    properties: dict[str, Tensor] = field(default_factory=dict)
    new_points: Tensor | None = None
    nearest: list[list[int]] = field(default_factory=list)


def task_map(model: Any, episodes: Episode, properties: dict[str, Tensor] | None = None, *,
             new: Episode | None = None, k: int = 5) -> TaskMap:
    """The task-embedding map of ``episodes`` (at least 3 tasks), coloured by ``properties``
    (e.g. ``tasks.properties(episodes)``), with ``new`` tasks placed on it and their ``k``
    nearest mapped tasks."""
    if episodes.num_tasks < 3:
        raise ValueError(f"a task map needs at least 3 tasks, got {episodes.num_tasks}")
    return embedding_map(embed(model, episodes), properties,
                         new=None if new is None else embed(model, new), k=k)


def embedding_map(z: Tensor, properties: dict[str, Tensor] | None = None, *,
                  new: Tensor | None = None, k: int = 5) -> TaskMap:
    """``task_map`` from embeddings ``z`` ``[T, D]`` (T >= 3) and, optionally, new ones
    ``[N, D]`` — for models whose tasks are not episodes (an RL policy's contexts)."""
    if z.dim() != 2 or z.shape[0] < 3:
        raise ValueError(f"a task map needs embeddings of at least 3 tasks, got shape "
                         f"{list(z.shape)}")
    properties = dict(properties or {})
    for name, values in properties.items():
        if not isinstance(values, Tensor) or values.shape != (z.shape[0],):
            raise ValueError(f"property {name!r} must be a tensor of {z.shape[0]} "
                             "values (one per task)")
    scores, components, explained, mean = _pca(z, 2)
    out = TaskMap(scores.float(), explained.float(), z, properties)
    if new is not None:
        out.new_points = ((new.double() - mean) @ components.T).float()
        distance = torch.cdist(new.to(z.dtype), z)
        out.nearest = distance.topk(min(k, z.shape[0]), largest=False).indices.tolist()
    return out


@torch.no_grad()
def params_from(model: Any, z: Tensor) -> Params:
    """The generated parameters ``{name: [T, *shape]}`` of embeddings ``z`` ``[T, D]``."""
    model = _model(model)
    out: Params = model.hypernet(z.to(model.device, model.dtype))
    return out


@torch.no_grad()
def _metric(model: Any, params: Params, episode: Episode) -> Tensor:
    """The kind's per-task metric of ``params`` on ``episode``'s queries (``[T]``)."""
    episode = model.prepare(episode)
    if episode.query_y is None:
        raise ValueError("the episode needs query_y to be scored")
    pred = model.target(params, episode.query_x)
    values: Tensor = model.kind.per_task_metric(pred.cpu(), episode.query_y.cpu())
    return values


@dataclass
class Interpolation:
    """Networks generated along ``z(alpha) = (1 - alpha) z_a + alpha z_b``.

    Attributes:
        alphas: the path's points, ``[A]``.
        metric_a, metric_b: the kind's metric (MSE, accuracy...) on each parent's queries.
        params: the generated parameters at each alpha (``{name: [A, *shape]}``).
        x, pred: for regression with 1-D inputs, a grid and each network's predictions on it
            (``[G]``, ``[A, G]``); ``None`` otherwise.
    """

    alphas: Tensor
    metric_a: Tensor
    metric_b: Tensor
    params: Params
    x: Tensor | None = None
    pred: Tensor | None = None


def interpolate(model: Any, a: Episode, b: Episode, alphas: Sequence[float] | Tensor = (),
                *, grid: Tensor | None = None) -> Interpolation:
    """Interpolate between tasks ``a`` and ``b`` (one task each) in embedding space; alpha 0
    and 1 reproduce the parents' generated networks exactly."""
    model = _model(model)
    _z_only(model, "interpolation")
    for name, episode in (("a", a), ("b", b)):
        if episode.num_tasks != 1:
            raise ValueError(f"task {name} must be one task, got {episode.num_tasks}")
    steps = torch.as_tensor(alphas if len(alphas) else torch.linspace(0, 1, 11),
                            dtype=torch.float64)
    za, zb = embed(model, a).double(), embed(model, b).double()
    z = torch.cat([(1 - t) * za + t * zb for t in steps]).float()  # exact at 0 and 1
    # one network at a time: a batched product may round differently from the single-task
    # one, and alpha 0 and 1 must give the parents' networks bit for bit
    each = [params_from(model, z[i:i + 1]) for i in range(len(z))]
    params = {n: torch.cat([p[n] for p in each]) for n in each[0]}
    count = len(steps)
    out = Interpolation(steps.float(), _metric(model, params, _repeat(a, count)),
                        _metric(model, params, _repeat(b, count)), params)
    if model.kind.name == "regression" and tuple(a.query_x.shape[2:]) == (1,):
        x = grid if grid is not None else torch.linspace(
            float(torch.cat([a.query_x, b.query_x]).min()),
            float(torch.cat([a.query_x, b.query_x]).max()), 200)
        with torch.no_grad():
            pred = model.target(params, x.reshape(1, -1, 1).expand(count, -1, -1)
                                .to(model.device, model.dtype))
        out.x, out.pred = x, pred.reshape(count, -1).cpu()
    return out


def _repeat(episode: Episode, count: int) -> Episode:
    def rep(t: Any) -> Any:
        return t.expand(count, *t.shape[1:]) if isinstance(t, Tensor) else t

    return Episode(rep(episode.support_x), rep(episode.support_y), rep(episode.query_x),
                   rep(episode.query_y), None, rep(episode.support_mask))


def sum_task(tasks: Any, a: Episode, b: Episode) -> Episode | None:
    """The combined task ``y = f_A(x) + f_B(x)`` at ``a``'s query points, for a function
    family (``FunctionTasks``: the descriptor is theta); ``None`` for other families."""
    function = getattr(tasks, "function", None)
    if not callable(function) or not isinstance(a.descriptor, Tensor) or \
            not isinstance(b.descriptor, Tensor):
        return None
    y = function(a.descriptor, a.query_x) + function(b.descriptor, a.query_x)
    return Episode(a.support_x, a.support_y, a.query_x, y)


def class_subtask(episode: Episode, low: int, high: int) -> Episode:
    """Classes ``low .. high - 1`` of a one-task classification episode, relabelled from 0
    (e.g. the two 5-way halves of a 10-way episode, whose ``union_task`` is the whole)."""
    if episode.num_tasks != 1 or episode.query_y is None:
        raise ValueError("class_subtask takes one task with query labels")
    s = (episode.support_y[0] >= low) & (episode.support_y[0] < high)
    q = (episode.query_y[0] >= low) & (episode.query_y[0] < high)
    return Episode(episode.support_x[:, s], episode.support_y[:, s] - low,
                   episode.query_x[:, q], episode.query_y[:, q] - low)


def union_task(a: Episode, b: Episode) -> Episode:
    """The combined classification task of ``a`` and ``b`` (one task each): both support and
    query sets, ``b``'s labels shifted past ``a``'s. Meant for tasks with disjoint classes
    (a class in both would appear under two labels)."""
    from hypermeta.episodes import episode_ways

    if a.query_y is None or b.query_y is None:
        raise ValueError("union_task needs query labels on both tasks")
    shift = episode_ways(a)
    return Episode(torch.cat([a.support_x, b.support_x], 1),
                   torch.cat([a.support_y, b.support_y + shift], 1),
                   torch.cat([a.query_x, b.query_x], 1),
                   torch.cat([a.query_y, b.query_y + shift], 1))


@dataclass
class Fusion:
    """Ways of combining two tasks' networks, and how each does.

    Attributes:
        networks: plain ``nn.Module``s (``target.materialize``): ``embedding_mix`` (generated
            from the mean of the parents' embeddings), ``support_mix`` (generated from the union
            of their support sets), ``weight_avg`` (the mean of the parents' generated
            weights), ``parent_a`` and ``parent_b``.
        metrics: ``{network: {task: value}}`` for tasks ``a``, ``b`` and, when given,
            ``combined``.
    """

    networks: dict[str, nn.Module]
    metrics: dict[str, dict[str, float]]


def fuse(model: Any, a: Episode, b: Episode, combined: Episode | None = None,
         *, weight: float = 0.5) -> Fusion:
    """Fuse tasks ``a`` and ``b`` (one task each): the fused networks see only the parents'
    embeddings, support sets or generated weights — never data of ``combined``, which (when
    given, with queries) only scores them.

    Candidates differ in the part the hypernetwork generates: ``embedding_mix`` (from the
    mixed embedding), ``support_mix`` (from the embedding of the union of the support sets),
    ``weight_avg`` (the average of the parents' generated tensors), ``parent_a``/``parent_b``.
    For a model with a per-class head (the union of two label sets), every candidate gets its
    head rows the same way, from support examples under its own generated layers: for task
    ``a`` from ``a``'s support set, for ``b`` from ``b``'s, and for the combined task (and the
    saved network) from the union of both, ``b``'s labels shifted past ``a``'s — so the
    candidates differ only in what the hypernetwork would have generated.
    """
    from hypermeta.episodes import episode_ways
    from hypermeta.heads import ClassHead

    model = _model(model)
    labelled = isinstance(model.class_head, ClassHead) and not model.class_head.descriptions
    if not labelled or model.finetune_steps:
        _z_only(model, "fusion")
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    shift = episode_ways(model.prepare(a)) if labelled else 0
    union = Episode(torch.cat([a.support_x, b.support_x], 1),
                    torch.cat([a.support_y, b.support_y + shift], 1), a.query_x)
    za, zb, zu = embed(model, a), embed(model, b), embed(model, union)
    params = params_from(model, torch.cat([za, zb, (1 - weight) * za + weight * zb, zu]))
    pa, pb, pm, pu = ({n: p[i:i + 1] for n, p in params.items()} for i in range(4))
    pw = {n: (1 - weight) * pa[n] + weight * pb[n] for n in pa}
    candidates = {"embedding_mix": pm, "support_mix": pu, "weight_avg": pw,
                  "parent_a": pa, "parent_b": pb}
    tasks = {"a": (a, a), "b": (b, b)}  # name: (head source, scored episode)
    if combined is not None:
        tasks["combined"] = (union, combined)

    def head(p: Params, source: Episode) -> Params:
        return model.with_head(p, model.prepare(source)) if labelled else p

    with torch.no_grad():
        metrics = {name: {task: float(_metric(model, head(p, source), episode)[0])
                          for task, (source, episode) in tasks.items()}
                   for name, p in candidates.items()}
        whole = {name: head(p, union) for name, p in candidates.items()}
    networks = {name: model.target.materialize({n: t[0] for n, t in p.items()})
                for name, p in whole.items()}
    return Fusion(networks, metrics)


def weight_stats(model: Any, episodes: Episode, *, components: int = 3) -> dict[str, Any]:
    """Per generated tensor, across the tasks of ``episodes``: the mean and spread of its norm,
    the mean per-entry standard deviation across tasks, and how much of its variation across
    tasks a linear map from the first ``components`` principal components of the task
    embeddings explains (R^2)."""
    model = _model(model)
    z = embed(model, episodes)
    return params_stats(z, params_from(model, z), components=components)


def params_stats(z: Tensor, params: Params, *, components: int = 3) -> dict[str, Any]:
    """``weight_stats`` from embeddings ``z`` ``[T, D]`` and the parameters generated from
    them ``{name: [T, ...]}``."""
    scores, _, explained, _ = _pca(z, components)
    design = torch.cat([scores, torch.ones(len(scores), 1, dtype=scores.dtype)], 1)
    layers = {}
    for name, p in params.items():
        flat = p.reshape(p.shape[0], -1).double().cpu()
        norms = flat.norm(dim=1)
        centred = flat - flat.mean(0)
        total = centred.square().sum()
        fit = design @ torch.linalg.lstsq(design, flat).solution
        residual = (flat - fit).square().sum()
        layers[name] = {"numel": flat.shape[1], "norm_mean": float(norms.mean()),
                        "norm_std": float(norms.std()) if len(norms) > 1 else 0.0,
                        "spread": float(flat.std(0).mean()) if len(flat) > 1 else 0.0,
                        "r2_top_pcs": float(1 - residual / total) if total > 0 else 0.0}
    return {"layers": layers, "embedding_explained": explained.tolist(),
            "tasks": z.shape[0]}


@torch.no_grad()
def support_influence(model: Any, episode: Episode) -> dict[str, Tensor]:
    """Leave each support example out in turn (one task): the relative change of the generated
    weights and the change of the query metric. ``param_change[i]`` = ||p(-i) - p|| / ||p||,
    ``metric_change[i]`` = metric(-i) - metric (for MSE, positive: the example helped; for
    accuracy, negative), ``metric`` the full support set's."""
    model = _model(model)
    if episode.num_tasks != 1:
        raise ValueError(f"one task is needed, got {episode.num_tasks}")
    shots = episode.support_x.shape[1]
    if shots < 2:
        raise ValueError("leaving one example out needs at least 2 support examples")
    y = episode.support_y
    if model.kind.uses_classes and not y.is_floating_point() and \
            int(torch.bincount(y.reshape(-1).long()).min()) < 2:
        raise ValueError("leaving one example out would remove a class with a single support "
                         "example (a 1-shot task): every class needs 2 or more")
    full = model.params(episode)
    flat = torch.cat([p.reshape(1, -1) for p in full.values()], 1)
    base = float(_metric(model, full, episode)[0])
    keep = [torch.tensor([j for j in range(shots) if j != i]) for i in range(shots)]
    left = Episode(torch.stack([episode.support_x[0, k] for k in keep]),
                   torch.stack([episode.support_y[0, k] for k in keep]),
                   episode.query_x.expand(shots, *episode.query_x.shape[1:]),
                   None if episode.query_y is None else
                   episode.query_y.expand(shots, *episode.query_y.shape[1:]))
    params = model.params(left)
    others = torch.cat([p.reshape(shots, -1) for p in params.values()], 1)
    change = (others - flat).norm(dim=1) / flat.norm().clamp_min(1e-12)
    metric = _metric(model, params, left) - base
    return {"param_change": change.cpu(), "metric_change": metric.cpu(),
            "metric": torch.tensor(base)}


def gate_stats(model: Any, episodes: Episode) -> dict[str, Any]:
    """Per-task structure of a gated model (``gates=True``): for each task the fraction of each
    gate site's units that stay open (``open [T, sites]``, the masks ``materialize`` prunes
    with) and the task's size as the open fraction over all gated units (``size [T]``)."""
    from hypermeta.gates import Gates

    model = _model(model)
    gates = model.target._part(Gates)
    if gates is None:
        raise ValueError("this model has no structure gates (train with gates: {enabled: true})")
    z = embed(model, episodes)
    params = params_from(model, z)
    sites = list(gates.sites)
    units = torch.tensor([float(gates.sites[s].units) for s in sites])
    rows = []
    import warnings

    with warnings.catch_warnings():  # an all-closed site is reported here, not warned about
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(z.shape[0]):
            masks = gates.masks({n: p[i] for n, p in params.items()})
            rows.append(torch.stack([masks[s].float().mean() for s in sites]))
    open_ = torch.stack(rows)
    size = (open_ * units).sum(1) / units.sum()
    return {"sites": sites, "units": units, "open": open_, "size": size}

