"""Where a conv-4 meta-training step's time goes on the CPU, and what makes it cheaper: the
Omniglot FiLM hypernetwork (``configs/omniglot_hypernet_film.yaml``: 20-way 1-shot, 5 queries
per class; its convolutions shared, BatchNorm scale/shift generated, per-class head) and
ProtoNets (``configs/omniglot_protonet.yaml``, same episodes), freshly initialised (speed does
not depend on the weights), one fixed episode batch per meta-batch size.

Arms, each a whole training step (forward, loss, backward, Adam step), alternating within every
round so drift in machine load hits all alike; medians:

* ``vmap``: the step before this benchmark: all tasks of a meta-batch in one vmapped call
  (with shared convolution weights vmap folds the tasks into one convolution batch),
  contiguous (NCHW) weights and images;
* ``per_task``: the same tasks one call each, still NCHW;
* ``channels_last_vmap``: vmapped, with weights and images in channels-last memory format;
* ``eager``: the trainer's step now (``FunctionalTarget(batching="auto")``: on the CPU a
  convolutional target runs one task at a time in channels-last format, and the trainer puts
  the learner's weights in channels-last);
* ``compiled``: ``eager`` with the loss through ``torch.compile`` (compile seconds recorded).

Plus ``profile``: the eager step's operators by self CPU time (torch.profiler).

    python benchmarks/conv4_step.py [--threads 1|2] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, interleaved_medians, parse_args, publish  # noqa: E402

from hypermeta import RunConfig  # noqa: E402
from hypermeta.episodes import Episode  # noqa: E402

CONFIGS = {"hypernet_film": "omniglot_hypernet_film.yaml", "protonet": "omniglot_protonet.yaml"}


def step_fn(learner: Any, episode: Episode, *, per_task: bool = False,
            compile_loss: bool = False) -> Callable[[], None]:
    """One training step of ``learner`` on ``episode`` (a fresh Adam, as the trainer's)."""
    learner = copy.deepcopy(learner).train()
    params = [p for p in learner.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=True)
    kind = learner.kind

    def loss_of(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
                qy: torch.Tensor) -> torch.Tensor:
        out = learner.outputs(Episode(sx, sy, qx, qy, ways=episode.ways), validate=False)
        loss: torch.Tensor = kind.loss(out.pred, qy)
        return loss if out.extra_loss is None else loss + out.extra_loss

    loss_fn = torch.compile(loss_of, dynamic=False) if compile_loss else loss_of
    assert episode.query_y is not None
    parts = [episode.task(i) for i in range(episode.num_tasks)] if per_task else [episode]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for part in parts:
            assert part.query_y is not None
            loss = loss_fn(part.support_x, part.support_y, part.query_x, part.query_y)
            (loss * part.num_tasks / episode.num_tasks).backward()
        optimizer.step()

    return step


def _last(x: torch.Tensor) -> torch.Tensor:
    # [T, N, C, H, W] whose every [N, C, H, W] slice is channels-last (strides of N, H, W, C)
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def variant(learner: Any, episode: Episode, *, batching: str, last: bool
            ) -> tuple[Any, Episode]:
    """A copy of ``learner`` whose targets batch tasks by ``batching`` (``auto``, ``vmap``),
    with weights (and images) in channels-last format when ``last``, else contiguous."""
    from hypermeta.target import FunctionalTarget

    model = copy.deepcopy(learner)
    for module in model.modules():
        if isinstance(module, FunctionalTarget):
            module.batching = batching
    fmt = torch.channels_last if last else torch.contiguous_format
    model.to(memory_format=fmt)
    if not last:
        return model, episode
    return model, Episode(_last(episode.support_x), episode.support_y,
                          _last(episode.query_x), episode.query_y, ways=episode.ways)


def profile(step: Callable[[], None], rows: int = 12) -> list[dict[str, Any]]:
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1000,
             "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:rows]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--meta-batch", type=int, nargs="+", default=[1, 4])
    args = parse_args(parser)
    from hypermeta.runs import build_learner, build_tasks

    repeats = 3 if args.smoke else args.repeats
    sets = [] if args.data_dir is None else [f"tasks.data_dir={args.data_dir}"]
    results: dict[str, Any] = {}
    for name, file in CONFIGS.items():
        config = RunConfig.from_file(ROOT / "configs" / file, sets)
        tasks = build_tasks(config)
        torch.manual_seed(0)
        learner = build_learner(config, tasks)
        for meta_batch in args.meta_batch:
            episode = tasks.sample("train", meta_batch, torch.Generator().manual_seed(0))
            old = variant(learner, episode, batching="vmap", last=False)
            now = variant(learner, episode, batching="auto", last=True)
            arms = {"vmap": step_fn(*old),
                    "per_task": step_fn(*old, per_task=True),
                    "channels_last_vmap": step_fn(*variant(learner, episode, batching="vmap",
                                                           last=True)),
                    "eager": step_fn(*now)}
            started = time.perf_counter()
            compiled = step_fn(*now, compile_loss=True)
            compiled()
            compile_s = time.perf_counter() - started
            arms["compiled"] = compiled
            timing = interleaved_medians(arms, repeats, warmup=2)
            before = timing["vmap"]["median_s"]
            results[f"{name}/mb{meta_batch}"] = {
                "step_ms": {k: 1000 * v["median_s"] for k, v in timing.items()},
                "speedup_vs_vmap": {k: before / v["median_s"] for k, v in timing.items()},
                "tasks_per_s": {k: meta_batch / v["median_s"] for k, v in timing.items()},
                "compile_s": compile_s,
                "profile": profile(arms["eager"]),
            }
            print(name, meta_batch, {k: round(1000 * v["median_s"], 1)
                                     for k, v in timing.items()}, flush=True)
    summary = {key: {"step_ms_before": r["step_ms"]["vmap"], "step_ms_now": r["step_ms"]["eager"],
                     "speedup_vs_vmap": r["speedup_vs_vmap"]} for key, r in results.items()}
    payload = {"benchmark": "conv4_step", **environment([0]), "complete": True,
               "protocol": __doc__.split("\n\n")[1], "results": results, "summary": summary}
    publish("conv4_step", payload, {}, smoke=args.smoke,
            config=f"cpu-t{torch.get_num_threads()}")


if __name__ == "__main__":
    main()
