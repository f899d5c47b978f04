"""Adaptation latency and meta-training throughput of the sinusoid hypernetwork, in one run.

* accuracy guard: the shipped ``configs/sinusoid_hypernet.yaml`` (K = 10, 10,000 steps,
  meta-batch 25) trained with this code for 3 seeds; test MSE on the 1,000 fixed test tasks
  (``mse_k10.hypernet`` = mean over seeds; resumable in ``benchmarks/runs/latency/``);
* ``adapt_ms``: one new task at a time, support tensors (K = 10) -> predictions on 100 query
  points, validation included, nothing cached across tasks; median over ``--tasks`` distinct
  test tasks after warm-up, the arms alternating in blocks of 25 tasks (a stream of new
  tasks per arm, as a server sees them; interleaving task by task would let each arm evict
  the other's weights from the cache): ``hypernet`` (the fast path,
  ``model.prepare_inference()``), ``hypernet_predict`` (``model.predict``), ``maml10`` (10 SGD
  steps of MAML on the same support set, then predict; MAML's cost does not depend on its
  weights, so it is timed on the config's freshly initialised model), at 1 and 2 threads;
* ``train_tasks_per_s.hypernet``: meta-training tasks/s at meta-batch 25, 2 threads (task
  sampling included; ``--train-steps`` steps from scratch, the trainer's own clock), median of
  3 runs; 1 thread too.

    python benchmarks/latency.py        # resumable; rerun until it says complete
    python benchmarks/latency.py --smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, parse_args, publish, train_in_chunks  # noqa: E402

from hypermeta import RunConfig, evaluate, fit, load_run  # noqa: E402
from hypermeta.episodes import Episode  # noqa: E402
from hypermeta.runs import build_learner, build_tasks  # noqa: E402

SEEDS = (0, 1, 2)
CONFIG = ROOT / "configs" / "sinusoid_hypernet.yaml"


def accuracy(args: argparse.Namespace, runs: Path, deadline: float) -> dict[str, Any] | None:
    """Train (resumably) and test the shipped K = 10 config for each seed."""
    out = {}
    for seed in SEEDS:
        sets = [f"seed={seed}", "threads=1"] + (["train.steps=300", "train.val_every=100"]
                                                if args.smoke else [])
        result = train_in_chunks(RunConfig.from_file(CONFIG, sets), runs / f"s{seed}", deadline)
        if result is None:
            return None
        run = load_run(runs / f"s{seed}")
        test = evaluate(run.learner, run.tasks.fixed_tasks("test"), "regression")
        out[str(seed)] = {"mse": test["mean"], "ci95": test["ci95"], "steps": result.steps_done}
    return out


def adapt(args: argparse.Namespace, model: Any, maml: Any, tasks: Any,
          threads: int) -> dict[str, float]:
    """Median ms per new task of each arm, the arms alternating in blocks of tasks."""
    torch.set_num_threads(threads)
    test = tasks.fixed_tasks("test")
    count = min(args.tasks, test.num_tasks)
    # fresh tensors per task (views of one buffer would share its cache lines)
    episodes = [Episode(test.support_x[i:i + 1].clone(), test.support_y[i:i + 1].clone(),
                        test.query_x[i:i + 1].clone()) for i in range(count)]
    fast = model.prepare_inference()
    arms = {"hypernet": fast, "hypernet_predict": model.predict, "maml10": maml.predict}
    for episode in episodes[:20]:  # warm-up
        for fn in arms.values():
            fn(episode)
    samples: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    block = 25  # each arm serves a stream of 25 new tasks, then the next arm the same 25
    for b, first in enumerate(range(0, count, block)):
        for name in names if b % 2 == 0 else names[::-1]:
            for episode in episodes[first:first + block]:
                start = time.perf_counter()
                arms[name](episode)
                samples[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(s) for name, s in samples.items()}


def train_rate(args: argparse.Namespace, threads: int) -> list[float]:
    """Meta-training tasks/s of the shipped config (fresh runs; task sampling included)."""
    rates = []
    steps = 60 if args.smoke else args.train_steps
    for _ in range(3):
        config = RunConfig.from_file(CONFIG, [f"train.steps={steps}", "train.val_tasks=1",
                                              f"train.val_every={steps}", f"threads={threads}",
                                              "device=cpu"])
        with tempfile.TemporaryDirectory(prefix="hypermeta-latency-") as folder:
            result = fit(config, Path(folder) / "run")
        rates.append(steps * config.train.meta_batch / result.train_seconds)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400, help="new tasks timed per arm")
    parser.add_argument("--train-steps", type=int, default=600)
    args = parse_args(parser)
    deadline = time.time() + 60 * args.budget_minutes
    runs = ROOT / "benchmarks" / "runs" / ("latency-smoke" if args.smoke else "latency")
    trained = accuracy(args, runs, deadline)
    payload: dict[str, Any] = {"benchmark": "latency", "complete": False,
                               "protocol": __doc__.split("\n\n")[1], "accuracy": trained,
                               "environment": environment(list(SEEDS))}
    if trained is None:
        publish("latency", payload, {}, smoke=args.smoke)
        return
    payload["environment"]["load_average_before_timing"] = list(os.getloadavg())
    run = load_run(runs / "s0")
    maml_config = RunConfig.from_file(ROOT / "configs" / "sinusoid_maml.yaml")
    maml = build_learner(maml_config, build_tasks(maml_config))
    latency = {f"threads{t}": adapt(args, run.learner, maml, run.tasks, t) for t in (1, 2)}
    training = {f"threads{t}": train_rate(args, t) for t in (2, 1)}
    head = latency["threads1"]
    payload.update(complete=True, adapt_ms=latency, train_tasks_per_s=training)
    payload["environment"]["load_average_after_timing"] = list(os.getloadavg())
    mses = [v["mse"] for v in trained.values()]
    payload["summary"] = {
        "mse_k10": {"hypernet": statistics.mean(mses), "hypernet_seeds": mses},
        "adapt_ms": {"hypernet": head["hypernet"], "maml10": head["maml10"],
                     "hypernet_predict": head["hypernet_predict"]},
        "adapt_speedup_vs_maml10": head["maml10"] / head["hypernet"],
        "adapt_ms_threads2": latency["threads2"],
        "adapt_speedup_vs_maml10_threads2":
            latency["threads2"]["maml10"] / latency["threads2"]["hypernet"],
        "train_tasks_per_s": {"hypernet": statistics.median(training["threads2"]),
                              "hypernet_threads1": statistics.median(training["threads1"])},
    }
    publish("latency", payload, {}, smoke=args.smoke)


if __name__ == "__main__":
    main()
