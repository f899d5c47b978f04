"""Model fusion on sinusoids: a network generated from the mean of two tasks' embeddings vs
one generated from the union of their support sets vs the average of their generated weights
vs the better parent, on the combined task ``y = f_A(x) + f_B(x)``.

The shipped ``configs/sinusoid_hypernet.yaml`` (K = 10) is trained once (resumable, in
``benchmarks/runs/fusion/``); 600 disjoint pairs of the fixed test tasks (task 2i with 2i+1);
each fused network sees only the parents' embeddings, support sets or weights, never the
combined task's data, which only scores them (MSE on task A's 100 query points). Mean ± 95% CI
over the pairs.

    python benchmarks/fusion.py        # resumable; rerun until it says complete
    python benchmarks/fusion.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, parse_args, publish, train_in_chunks  # noqa: E402

from hypermeta import RunConfig, load_run  # noqa: E402
from hypermeta import inspect as hi  # noqa: E402
from hypermeta.evaluate import summarize  # noqa: E402

CONFIG = ROOT / "configs" / "sinusoid_hypernet.yaml"
NETWORKS = ("embedding_mix", "support_mix", "weight_avg", "parent_a", "parent_b")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=600)
    args = parse_args(parser)
    if args.smoke:
        args.pairs = 20
    deadline = time.time() + 60 * args.budget_minutes
    runs = ROOT / "benchmarks" / "runs" / ("fusion-smoke" if args.smoke else "fusion")
    sets = ["seed=0"] + (["train.steps=200", "train.val_every=100"] if args.smoke else [])
    result = train_in_chunks(RunConfig.from_file(CONFIG, sets), runs / "run", deadline)
    payload: dict[str, Any] = {"benchmark": "fusion", "complete": False,
                               "protocol": __doc__.split("\n\n")[1],
                               "environment": environment([0])}
    if result is None:
        publish("fusion", payload, {}, smoke=args.smoke)
        return
    run = load_run(runs / "run")
    model, tasks = run.hypermodel, run.tasks
    test = tasks.fixed_tasks("test", 2 * args.pairs)  # a continuous family draws any number
    values: dict[str, dict[str, list[float]]] = {n: {"a": [], "b": [], "combined": []}
                                                  for n in NETWORKS}
    for i in range(args.pairs):
        a, b = test.task(2 * i), test.task(2 * i + 1)
        fused = hi.fuse(model, a, b, hi.sum_task(tasks, a, b))
        for name, metrics in fused.metrics.items():
            for task, value in metrics.items():
                values[name][task].append(value)
    table = {name: {task: summarize(torch.tensor(v)) for task, v in per.items()}
             for name, per in values.items()}
    best = [min(x, y) for x, y in zip(values["parent_a"]["combined"],
                                      values["parent_b"]["combined"])]
    table["parent_best"] = {"combined": summarize(torch.tensor(best))}
    combined = {name: table[name]["combined"] for name in table}
    payload.update(complete=True, pairs=args.pairs, steps=result.steps_done, mse=table,
                   summary={"fusion_mse": {k: v["mean"] for k, v in combined.items()},
                            "fusion_mse_ci95": {k: v["ci95"] for k, v in combined.items()},
                            "embedding_mix_beats_weight_avg":
                                combined["embedding_mix"]["mean"]
                                < combined["weight_avg"]["mean"],
                            "fusion_acc": None})
    payload["classification"] = ("not run: the shipped classification models generate a "
                                 "per-class head from support features, which fusion by "
                                 "embedding does not cover")
    publish("fusion", payload, {}, smoke=args.smoke)


if __name__ == "__main__":
    main()
