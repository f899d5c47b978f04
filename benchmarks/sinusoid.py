"""Sinusoid few-shot regression: hypernetwork vs MAML, first-order MAML and from-scratch training.

K = 5 and 10 (a model trained at each K), 3 training seeds, the 1,000 fixed test tasks with 100
query points each. Reports test MSE ± 95% CI per seed and the spread over seeds, meta-training
wall time and tasks/s, and adaptation latency for one task (support tensors -> predictions on
100 query points; medians over interleaved repeats).

    python benchmarks/sinusoid.py            # resumable: run again until it says complete
    python benchmarks/sinusoid.py --smoke    # tiny budget, writes *-smoke.json
    python benchmarks/sinusoid.py --latency-only   # re-measure latency on the finished runs

Each call works for at most --budget-minutes (default 9), in chunks of 500 meta-steps, keeps the
training runs in benchmarks/runs/sinusoid/ (git-ignored) and writes
results/sinusoid-cpu.json with "complete": false until every unit is done.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    ROOT,
    environment,
    interleaved_medians,
    result_path,
    train_in_chunks,
    write_result,
)

from hypermeta import RunConfig, evaluate, load_run  # noqa: E402

METHODS = ("hypernet", "maml", "fomaml", "scratch")
FINETUNE_STEPS = 10
FINETUNE_LRS = (1e-3, 3e-3, 1e-2)


def unit_config(method: str, shots: int, seed: int, smoke: bool) -> RunConfig:
    overrides = [f"tasks.shots={shots}", f"seed={seed}"]
    if smoke:
        overrides += ["train.steps=200", "train.val_every=100"]
    return RunConfig.from_file(ROOT / "configs" / f"sinusoid_{method}.yaml", overrides)


def run_unit(method: str, shots: int, seed: int, runs: Path, deadline: float,
             smoke: bool) -> dict[str, Any] | None:
    """Train (in chunks, until the deadline) and evaluate one (method, K, seed)."""
    config = unit_config(method, shots, seed, smoke)
    run_dir = runs / f"{method}-k{shots}-s{seed}"
    result = train_in_chunks(config, run_dir, deadline)
    if result is None:
        return None
    loaded = load_run(run_dir)
    learner, tasks, cid = loaded.learner, loaded.tasks, loaded.content_id
    test = tasks.fixed_tasks("test")
    out: dict[str, Any] = {
        "method": method, "shots": shots, "seed": seed, "content_id": cid,
        "steps_done": result.steps_done, "best_step": result.best_step,
        "train_seconds": result.train_seconds,
        "train_tasks_per_s": (result.steps_done * config.train.meta_batch
                              / result.train_seconds if result.train_seconds else None),
        "test": evaluate(learner.predict, test, "regression"),
    }
    if method == "hypernet":  # fine-tuning step size chosen on the val tasks, never on test
        tuned = functools.partial(learner.predict, finetune_steps=FINETUNE_STEPS)
        val = tasks.fixed_tasks("val")
        scores = {}
        for lr in FINETUNE_LRS:
            learner.finetune_lr = lr
            scores[lr] = evaluate(tuned, val, "regression")["mean"]
        learner.finetune_lr = min(scores, key=lambda lr: scores[lr])
        out["finetune"] = {"steps": FINETUNE_STEPS, "lr": learner.finetune_lr,
                           "val_mse_by_lr": {str(k): v for k, v in scores.items()}}
        out["test_finetuned"] = evaluate(tuned, test, "regression")
    return out


def latency(runs: Path, repeats: int) -> dict[str, Any]:
    """Median ms from support tensors to predictions on 100 query points, one task, K=10."""
    loaded = load_run(runs / "hypernet-k10-s0")
    hyper, tasks = loaded.learner, loaded.tasks
    maml = load_run(runs / "maml-k10-s0").learner
    one = tasks.fixed_tasks("test").task(0)

    def hypernet() -> None:
        with torch.inference_mode():  # encode + generate + predict, input validation included
            hyper(one)

    def maml10() -> None:
        maml.predict(one)  # 10 SGD steps on the support set (autograd), then predict

    timing = interleaved_medians({"hypernet": hypernet, "maml10": maml10}, repeats, warmup=10)
    return {name: {"median_ms": 1000 * t["median_s"]} for name, t in timing.items()}


def latency_summary(lat: dict[str, Any]) -> dict[str, Any]:
    return {"adapt_ms": {"hypernet": lat["hypernet"]["median_ms"],
                         "maml10": lat["maml10"]["median_ms"]},
            "adapt_speedup_vs_maml10": lat["maml10"]["median_ms"] / lat["hypernet"]["median_ms"]}


def summarize(units: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for shots in (5, 10):
        row = {}
        for method in METHODS:
            for key, name in (("test", method), ("test_finetuned", f"{method}_finetuned")):
                values = [u[key]["mean"] for u in units
                          if u["method"] == method and u["shots"] == shots and key in u]
                if values:
                    row[name] = {"mean_over_seeds": statistics.mean(values),
                                 "seed_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                 "seed_min": min(values), "seed_max": max(values),
                                 "seeds": len(values)}
        table[f"k{shots}"] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget-minutes", type=float, default=9.0)
    parser.add_argument("--repeats", type=int, default=200, help="latency repeats")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--latency-only", action="store_true",
                        help="re-measure only the adaptation latency of a complete result")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.repeats = [0], 20
    deadline = time.time() + 60 * args.budget_minutes
    runs = ROOT / "benchmarks" / "runs" / ("sinusoid-smoke" if args.smoke else "sinusoid")
    path = result_path("sinusoid", "cpu", smoke=args.smoke)
    previous = json.loads(path.read_text()) if path.exists() else {}
    done = {(u["method"], u["shots"], u["seed"]): u for u in previous.get("units", [])}
    env = environment(args.seeds)
    if args.latency_only:
        if not previous.get("complete"):
            raise SystemExit(f"{path} is not complete: run the benchmark first")
        previous["latency"] = latency(runs, args.repeats)
        previous["latency_environment"] = env
        previous["summary"].update(latency_summary(previous["latency"]))
        write_result(path, previous)
        print(json.dumps(previous["summary"], indent=1))
        return
    units_wanted = [(m, k, s) for s in args.seeds for k in (10, 5) for m in METHODS]
    for key in units_wanted:
        if key in done:
            continue
        unit = run_unit(*key, runs, deadline, args.smoke)
        if unit is None:
            break
        done[key] = unit
        print(f"{key[0]:9s} K={key[1]:2d} seed={key[2]}  test MSE {unit['test']['mean']:.4f} "
              f"± {unit['test']['ci95']:.4f}", flush=True)
    units = [done[k] for k in units_wanted if k in done]
    complete = len(units) == len(units_wanted)
    payload: dict[str, Any] = {"benchmark": "sinusoid", "complete": complete,
                               "units_done": len(units), "units_total": len(units_wanted),
                               "environment": env, "config": vars(args),
                               "finetune_steps": FINETUNE_STEPS, "units": units}
    table = summarize(units)
    payload["table"] = table
    summary: dict[str, Any] = {}
    for shots in (5, 10):
        row = table[f"k{shots}"]
        summary[f"mse_k{shots}"] = {name: row[key]["mean_over_seeds"] for name, key in (
            ("hypernet", "hypernet"), ("hypernet_finetuned", "hypernet_finetuned"),
            ("maml", "maml"), ("fomaml", "fomaml"), ("scratch", "scratch")) if key in row}
    if complete or previous.get("latency"):
        payload["latency"] = (latency(runs, args.repeats) if complete
                              else previous.get("latency"))
    if payload.get("latency"):
        summary.update(latency_summary(payload["latency"]))
    payload["summary"] = summary
    RESULTS.mkdir(exist_ok=True)
    write_result(path, payload)
    print(json.dumps(summary, indent=1))
    print(f"wrote {path} (complete: {complete}, {len(units)}/{len(units_wanted)} units)")
    sys.exit(0 if complete else 3)


if __name__ == "__main__":
    main()
