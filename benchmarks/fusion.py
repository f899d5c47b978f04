"""Model fusion: a network generated from the mean of two tasks' embeddings vs one generated
from the union of their support sets vs the average of their generated weights vs the better
parent — on sinusoids (combined task ``y = f_A(x) + f_B(x)``) and on spoken words (combined
task: the union of two 5-way label sets, 10-way).

The shipped ``configs/sinusoid_hypernet.yaml`` (K = 10) is trained once (resumable, in
``benchmarks/runs/fusion/``); 600 disjoint pairs of the fixed test tasks (task 2i with 2i+1);
each fused network sees only the parents' embeddings, support sets or weights, never the
combined task's data, which only scores them (MSE on task A's 100 query points). Mean ± 95% CI
over the pairs.

Spoken words: the speech benchmark's K = 5 hypernetwork (``configs/speech_hypernet.yaml`` with
its overrides: 500 steps of meta-batch 4; reused from ``benchmarks/runs/speech/`` when that run
is there and has the same config, else trained here). 600 fixed 10-way 5-shot test episodes
(10 queries per class, test words x test voices), each split into parents A (its classes 0-4)
and B (5-9). The per-class head's rows of every candidate come from support examples under
that candidate's generated layers (the union of A's and B's support sets for the combined
task), so candidates differ only in what the hypernetwork generates. Accuracy in percent on
the combined task's 100 queries.

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
WORDS = ROOT / "configs" / "speech_hypernet.yaml"
WORDS_SETS = ["tasks.shots=5", "train.steps=500", "train.meta_batch=4", "train.val_every=100",
              "train.val_tasks=100"]
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
    words = classification(args, runs, deadline)
    if words is None:
        payload["complete"] = False
    else:
        payload["classification"] = words
        payload["summary"]["fusion_acc"] = {k: v["mean"] for k, v in words["combined"].items()}
        payload["summary"]["fusion_acc_ci95"] = {k: v["ci95"]
                                                 for k, v in words["combined"].items()}
        payload["summary"]["embedding_mix_beats_weight_avg_acc"] = (
            words["combined"]["embedding_mix"]["mean"] > words["combined"]["weight_avg"]["mean"])
    publish("fusion", payload, {}, smoke=args.smoke)


def classification(args: Any, runs: Path, deadline: float) -> dict[str, Any] | None:
    """Fusion of two 5-way spoken-word tasks into their 10-way union (percent accuracy)."""
    import json

    from hypermeta import get_tasks

    sets = WORDS_SETS + (["train.steps=20", "train.val_every=10", "train.val_tasks=10"]
                         if args.smoke else [])
    config = RunConfig.from_file(WORDS, sets)
    shared = ROOT / "benchmarks" / "runs" / "speech" / "words-hypernet-k5"
    reused = (not args.smoke and (shared / "config.json").is_file()
              and json.loads((shared / "config.json").read_text())
              == json.loads(config.model_dump_json()))
    run_dir = shared if reused else runs / "words"
    if not reused and train_in_chunks(config, run_dir, deadline, chunk=100) is None:
        return None
    run = load_run(run_dir)
    model = run.hypermodel
    source = get_tasks(config.tasks.name, **{**config.tasks.kwargs(), "ways": 10})
    pairs = 20 if args.smoke else args.pairs
    test = source.fixed_tasks("test", pairs)
    values: dict[str, dict[str, list[float]]] = {n: {"a": [], "b": [], "combined": []}
                                                  for n in NETWORKS}
    for i in range(pairs):
        whole = test.task(i)
        a, b = hi.class_subtask(whole, 0, 5), hi.class_subtask(whole, 5, 10)
        fused = hi.fuse(model, a, b, hi.union_task(a, b))
        for name, metrics in fused.metrics.items():
            for task, value in metrics.items():
                values[name][task].append(100 * value)
    table = {name: {task: summarize(torch.tensor(v)) for task, v in per.items()}
             for name, per in values.items()}
    best = [max(x, y) for x, y in zip(values["parent_a"]["combined"],
                                      values["parent_b"]["combined"])]
    combined = {name: table[name]["combined"] for name in table}
    combined["parent_best"] = summarize(torch.tensor(best))
    return {"model": str(run_dir.relative_to(ROOT)), "reused_speech_run": reused,
            "content_id": run.content_id, "pairs": pairs, "unit": "% accuracy",
            "accuracy": table, "combined": combined}


if __name__ == "__main__":
    main()
