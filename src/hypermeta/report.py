"""``hypermeta inspect RUN_DIR``: one self-contained static HTML page about a trained run —
training curves, config, task-embedding map, generated-weight statistics, interpolation,
fusion and support-example influence (``hypermeta.inspect`` computes, this module draws).
Figures are inline PNGs (matplotlib, the ``plot`` extra); no JavaScript, no CDN. A section that
does not apply to the run (a baseline has no embeddings; a class-head model no interpolation)
is left out with a line saying why, never drawn broken."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hypermeta import inspect as hi
from hypermeta.checkpoint import atomic_write_bytes
from hypermeta.episodes import Episode


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the report draws with matplotlib: pip install 'hypermeta[plot]'") \
            from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metric_name(kind: Any) -> str:
    return {"regression": "MSE", "classification": "accuracy"}.get(kind.name, "metric")


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _curves(run_dir: Path, metric: str) -> str:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return "<p>No metrics.jsonl in this run folder.</p>"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val"]) for r in rows if "val" in r]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, points, label in ((axes[0], loss, "training loss"),
                              (axes[1], val, f"validation {metric}")):
        if points:
            ax.plot(*zip(*points), color="tab:blue", label=label)
        ax.set_xlabel("meta-training step")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    if loss and min(v for _, v in loss) > 0:
        axes[0].set_yscale("log")
    return _png(fig)


def _map(model: Any, tasks: Any, episodes: Episode, new: Episode,
         colour_by: list[str] | None) -> str:
    properties = tasks.properties(episodes)
    if colour_by is not None:  # names checked by write_report
        properties = {n: properties[n] for n in colour_by}
    result = hi.task_map(model, episodes, properties, new=new, k=5)
    return _draw_map(result, properties, "dots: training tasks; red stars: two test tasks, "
                     "lines to their 5 nearest training tasks (in embedding space).")


def _draw_map(result: Any, properties: dict[str, Tensor], legend: str) -> str:
    plt = _pyplot()
    names: list[str | None] = [*properties] or [None]
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        x, y = result.points[:, 0].numpy(), result.points[:, 1].numpy()
        if name is None:
            ax.scatter(x, y, s=10, color="tab:blue", label="tasks")
        else:
            points = ax.scatter(x, y, s=10, c=properties[name].numpy(), cmap="viridis")
            fig.colorbar(points, ax=ax, label=name)
        assert result.new_points is not None
        ax.scatter(result.new_points[:, 0], result.new_points[:, 1], marker="*", s=160,
                   color="tab:red", edgecolor="black", label="new tasks")
        for i, near in enumerate(result.nearest):
            for j in near:
                ax.plot([result.new_points[i, 0], x[j]], [result.new_points[i, 1], y[j]],
                        color="tab:red", lw=0.6, alpha=0.6)
        ax.set_xlabel(f"PC 1 ({100 * float(result.explained[0]):.0f}% of variance)")
        ax.set_ylabel(f"PC 2 ({100 * float(result.explained[1]):.0f}% of variance)")
        ax.set_title(f"task embeddings, coloured by {name}" if name else "task embeddings")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()  # colour-bar labels clear of the next panel
    caption = ("no property declared by this task family: uncoloured" if names == [None]
               else "colour: " + ", ".join(str(n) for n in names))
    return f"{_png(fig)}<p>{html.escape(caption)}; {html.escape(legend)}</p>"


def _stats(model: Any, episodes: Episode) -> str:
    return _stats_table(hi.weight_stats(model, episodes), "test tasks")


def _stats_table(stats: dict[str, Any], what: str) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{v['numel']}</td><td>{v['norm_mean']:.4g}</td>"
        f"<td>{v['norm_std']:.3g}</td><td>{v['spread']:.3g}</td><td>{v['r2_top_pcs']:.3f}</td>"
        "</tr>" for name, v in stats["layers"].items())
    explained = ", ".join(f"{100 * e:.1f}%" for e in stats["embedding_explained"])
    return (f"<p>{stats['tasks']} {html.escape(what)}; the first principal components of the task "
            f"embeddings explain {explained} of their variance.</p><table><tr><th>generated "
            "tensor</th><th>entries</th><th>norm, mean</th><th>norm, std</th><th>per-entry "
            "std across tasks</th><th>R&sup2; from top 3 PCs</th></tr>" + rows + "</table>")


def _gates(model: Any, episodes: Episode, properties: dict[str, Tensor]) -> str:
    stats = hi.gate_stats(model, episodes)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"wspace": 0.55})
    order = torch.argsort(stats["size"])
    shown = axes[0].imshow(stats["open"][order].T.numpy(), aspect="auto", cmap="viridis",
                           vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(shown, ax=axes[0], label="open fraction of the site's units")
    axes[0].set_yticks(range(len(stats["sites"])), stats["sites"])
    axes[0].set_xlabel("task (sorted by size)")
    axes[0].set_ylabel("gate site")
    axes[0].set_title("gate map")
    name = next(iter(properties), None)
    if name is not None:
        axes[1].scatter(properties[name].numpy(), stats["size"].numpy(), s=10)
        axes[1].set_xlabel(name)
    else:
        axes[1].hist(stats["size"].numpy(), bins=20, color="tab:green")
        axes[1].set_xlabel("task size")
    axes[1].set_ylabel("open fraction of all gated units" if name else "tasks")
    if name is not None:
        axes[1].set_ylim(0, 1.05)
    axes[1].set_title("per-task network size")
    return _png(fig)


def _interpolation(model: Any, a: Episode, b: Episode) -> str:
    path = hi.interpolate(model, a, b)
    plt = _pyplot()
    width = 2 if path.pred is not None else 1
    fig, axes = plt.subplots(1, width, figsize=(5.2 * width, 3.6), squeeze=False)
    ax = axes[0][0]
    metric = _metric_name(model.kind)
    ax.plot(path.alphas, path.metric_a, marker="o", label="on task A")
    ax.plot(path.alphas, path.metric_b, marker="s", label="on task B")
    ax.set_xlabel("alpha (0 = task A's embedding, 1 = task B's)")
    ax.set_ylabel(f"query {metric}")
    ax.set_title("networks along the embedding path")
    ax.legend()
    ax.grid(alpha=0.3)
    if path.pred is not None and path.x is not None:
        ax = axes[0][1]
        colours = plt.get_cmap("coolwarm")(torch.linspace(0, 1, len(path.alphas)).numpy())
        for alpha, pred, colour in zip(path.alphas, path.pred, colours):
            ax.plot(path.x, pred, color=colour, lw=1.2, label=f"alpha {float(alpha):.1f}")
        ax.scatter(a.support_x.flatten(), a.support_y.flatten(), color="tab:blue", s=18,
                   label="A's support", zorder=3)
        ax.scatter(b.support_x.flatten(), b.support_y.flatten(), color="tab:red", s=18,
                   marker="s", label="B's support", zorder=3)
        ax.set_xlabel("x")
        ax.set_ylabel("prediction")
        ax.set_title("predictions along the path")
        ax.legend(fontsize=6, ncol=2)
    return _png(fig)


def _fusion(model: Any, tasks: Any, a: Episode, b: Episode) -> str:
    combined, what = hi.sum_task(tasks, a, b), "y = f_A(x) + f_B(x) at A's query points"
    if combined is None and model.kind.name == "classification" and model.class_head is not None:
        combined = hi.union_task(a, b)
        what = ("A's and B's classes together (B's labels after A's; head rows from both "
                "support sets; a class in both tasks would count twice)")
    result = hi.fuse(model, a, b, combined)
    columns = list(next(iter(result.metrics.values())))
    header = "".join(f"<th>task {html.escape(c)}</th>" for c in columns)
    rows = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(
        f"<td>{values[c]:.4g}</td>" for c in columns) + "</tr>"
        for name, values in result.metrics.items())
    what = what if combined is not None else "(this family cannot build a combined task)"
    metric = _metric_name(model.kind)
    return (f"<p>Query {metric} of each way to combine tasks A and B; combined task: "
            f"{html.escape(what)}. The fused networks see only the parents' embeddings, "
            "support sets or weights.</p><table><tr><th>network</th>" + header + "</tr>"
            + rows + "</table>")


def _influence(model: Any, episode: Episode) -> str:
    result = hi.support_influence(model, episode)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    index = range(len(result["param_change"]))
    axes[0].bar(index, result["param_change"].numpy(), color="tab:purple")
    axes[0].set_xlabel("support example left out")
    axes[0].set_ylabel("relative change of generated weights")
    axes[1].bar(index, result["metric_change"].numpy(), color="tab:orange")
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].set_xlabel("support example left out")
    metric = _metric_name(model.kind)
    axes[1].set_ylabel(f"change of query {metric}")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _section(title: str, build: Callable[[], str]) -> str:
    try:
        body = build()
    except ValueError as err:  # the section does not apply to this run: say why
        body = f"<p class='skip'>Not shown: {html.escape(str(err))}</p>"
    return f"<h2>{html.escape(title)}</h2>\n{body}\n"


def write_report(run_dir: str | Path, out: str | Path | None = None, *, tasks: int = 200,
                 which: str = "best", colour_by: list[str] | None = None) -> Path:
    """Write ``report.html`` about the run in ``run_dir`` into ``out`` (default
    ``run_dir/report``); returns its path. ``tasks``: test tasks for the map and statistics;
    ``colour_by``: the task properties to colour the map by (default: every property the
    family declares; an unknown name is a ``ValueError`` listing them)."""
    from hypermeta.runs import load_run

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    if tasks < 3:
        raise ValueError(f"tasks must be >= 3, got {tasks}")
    _pyplot()  # a missing extra is an error before anything is computed
    from hypermeta.rl.run import is_rl_run

    if is_rl_run(run_dir):
        subtitle, sections = _rl_sections(run_dir, tasks, colour_by)
        return _write_page(run_dir, out, subtitle, sections)
    run = load_run(run_dir, which=which)
    source = run.tasks
    metric = _metric_name(source.kind)
    if colour_by is not None:  # checked before anything is drawn
        declared = source.properties(source.fixed_tasks("test", 3))
        unknown = [n for n in colour_by if n not in declared]
        if unknown:
            raise ValueError(f"task property {unknown[0]!r} is not declared by task family "
                           f"{source.name!r}; it declares {sorted(declared) or 'none'}")
    sections = [_section("Training curves", lambda: _curves(run_dir, metric))]
    model = run.learner
    try:
        hi._model(model)
        ok = True
    except ValueError as err:
        ok = False
        sections.append(f"<p class='skip'>Embedding sections not shown: "
                        f"{html.escape(str(err))}</p>")
    if ok:
        torch.manual_seed(0)
        test = source.fixed_tasks("test", tasks)
        new, a, b = test.slice(0, 2), test.task(0), test.task(1)
        try:  # the map shows training tasks; new (test) tasks are placed among them
            mapped = source.fixed_tasks("train", tasks)
        except (ValueError, KeyError, NotImplementedError):
            mapped = test.slice(2, test.num_tasks)
        sections += [
            _section("Task-embedding map",
                     lambda: _map(model, source, mapped, new, colour_by)),
            _section("Generated weights across tasks", lambda: _stats(model, mapped)),
            *([_section("Per-task structure (gates)", lambda: _gates(
                model, mapped, source.properties(mapped)))]
              if getattr(model.target, "has_gates", False) else []),
            _section("Interpolation between two test tasks",
                     lambda: _interpolation(model, a, b)),
            _section("Model fusion", lambda: _fusion(model, source, a, b)),
            _section("Which support examples matter (task A, leave one out)",
                     lambda: _influence(model, a)),
        ]
    subtitle = (f"{run.config.method} on {source.name} ({source.kind.name}), checkpoint "
                f"{which}, content id {run.content_id[:12]}.")
    return _write_page(run_dir, out, subtitle, sections)


def _write_page(run_dir: Path, out: str | Path | None, subtitle: str,
                sections: list[str]) -> Path:
    config = html.escape(json.dumps(json.loads((run_dir / "config.json").read_text()),
                                    indent=2))
    sections = [*sections, f"<h2>Config</h2>\n<pre>{config}</pre>\n"]
    title = f"hypermeta report: {run_dir.name}"
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>"
            f"{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:1100px;"
            "margin:2em auto;color:#222}img{max-width:100%}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}.skip{color:#777}"
            f"</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>\n"
            + "".join(sections) + "</body></html>\n")
    target = Path(out) if out is not None else run_dir / "report"
    target.mkdir(parents=True, exist_ok=True)
    path = target / "report.html"
    atomic_write_bytes(path, page.encode())
    return path


# ------------------------------------------------------------------------------------ RL runs
def _rl_curve(run_dir: Path) -> str:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []
    points = [(r["steps"], r["episode_return"]) for r in rows
              if r.get("episode_return") is not None]
    if not points:
        return "<p>No episode returns recorded yet (metrics.jsonl).</p>"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(*zip(*points), marker="o", color="tab:blue")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean training episode return")
    ax.set_title("training return (last 100 episodes at each checkpoint)")
    ax.grid(alpha=0.3)
    return _png(fig)


def _rl_sections(run_dir: Path, tasks: int, colour_by: list[str] | None
                 ) -> tuple[str, list[str]]:
    """An RL run's report: return curve; for the hypernet variant the context-embedding map
    (training-range contexts coloured by each parameter; the fixed test contexts placed on
    it) and the generated policy weights' statistics. Interpolation, fusion and support
    influence are defined on episodes with query sets, and are not drawn for policies."""
    import numpy as np

    from hypermeta.rl.run import fixed_contexts, load_rl_run

    run = load_rl_run(run_dir)
    config, net = run.config, run.net
    space = config.task_space
    games = config.env.games_family
    names = [] if games else list(space.names)
    if colour_by is not None:
        unknown = [n for n in colour_by if n not in names]
        if unknown:
            raise ValueError(f"task property {unknown[0]!r} is not a context parameter of "
                             f"{config.env.family}; it has {names or 'none'}")
        names = list(colour_by)
    subtitle = (f"RL: {config.policy.variant} policy on {config.env.family}, "
                f"{run.steps} environment steps, content id {run.content_id[:12]}.")
    sections = [_section("Training curve", lambda: _rl_curve(run_dir))]
    if net.encoder is None:
        sections.append(f"<p class='skip'>Embedding sections not shown: the "
                        f"{html.escape(config.policy.variant)} variant has no context "
                        "encoder or generator.</p>")
        return subtitle, sections
    if games:
        raw = list(space.games)
        context = torch.stack([torch.from_numpy(space.context(g)) for g in raw])
        new = None
    else:
        raw = space.sample(np.random.default_rng(0), tasks, "train")
        context = torch.from_numpy(space.normalise(raw))
        tests = [*fixed_contexts(config, "interp", 1), *fixed_contexts(config, "extrap", 1)]
        new = torch.from_numpy(space.normalise(np.array(tests)))
    with torch.no_grad():
        z = net.embed(context)
        params = net.pi.hyper(z)
        z_new = None if new is None else net.embed(new)

    def drawn() -> str:
        properties = {n: torch.from_numpy(np.asarray(raw)[:, list(space.names).index(n)])
                      for n in names}
        if len(z) < 3:
            raise ValueError(f"a map needs at least 3 tasks; this run has {len(z)} games")
        result = hi.embedding_map(z, properties, new=z_new)
        if result.new_points is None:
            result.new_points, result.nearest = result.points[:0], []
        return _draw_map(result, properties, "dots: contexts drawn from the training ranges; "
                         "red stars: one interpolation and one extrapolation test context, "
                         "lines to their 5 nearest dots (in embedding space).")

    sections += [
        _section("Context-embedding map", drawn),
        _section("Generated policy weights across contexts",
                 lambda: _stats_table(hi.params_stats(z, params), "contexts" if not games
                                      else "games")),
        "<p class='skip'>Interpolation, fusion and support influence are not shown: they "
        "score networks on episodes' query sets, which a policy does not have.</p>",
    ]
    return subtitle, sections
