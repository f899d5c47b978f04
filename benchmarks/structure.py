"""Does generated structure follow task difficulty? Gated vs ungated hypernetworks on mixed tasks.

Task family ``mixed`` (constant, line, low- and high-frequency sinusoid, sum of both; the kind is
hidden from the model, which reads a K=20 support set). Two models with the same architecture
and training budget: per-task hard-concrete gates over the hidden units of a 1-64-64-1 target
(sparsity cost ``--sparsity``) and the same without gates. On the 1,000 fixed test tasks:
MSE of both, and for the gated one the FLOPs (``FlopCounterMode``) and parameters of each task's
pruned network, grouped by kind.

    python benchmarks/structure.py [--sparsity 0.02]  # results/structure-mixed-l0.02.json
    python benchmarks/structure.py --gate-mode width   # ordered widths: ...-mixed-width-l0.02
    python benchmarks/structure.py --smoke    # tiny budget, *-smoke.json

With ``--family omniglot`` (needs ``--data-dir`` or ``HYPERMETA_DATA``): Omniglot 5-way 1-shot,
the conv-4 FiLM + per-class-head hypernetwork (configs/omniglot_hypernet_film.yaml) with and
without per-task channel gates, the same number of episodes; accuracy on 600 test episodes,
FLOPs of each task's pruned network, and the rank correlation between a task's FLOPs and its
difficulty (the ungated model's error on it). results/structure-omniglot-<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, result_path, train_in_chunks, write_result  # noqa: E402

from hypermeta import (  # noqa: E402
    RunConfig,
    build_network,
    count_flops,
    get_kind,
    get_tasks,
    load_run,
    summarize,
)

FUNCTIONS = get_tasks("mixed").functions  # the mixed family's functions, easiest first


def config(gated: bool, steps: int, sparsity: float, seed: int,
           mode: str = "units", estimator: str = "hard_concrete", warmup: int = 0,
           head: dict[str, Any] | None = None) -> RunConfig:
    return RunConfig.from_dict({
        "method": "hypernet", "seed": seed,
        "tasks": {"name": "mixed", "shots": 20, "queries": 20},
        "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [64, 64]},
        "encoder": {"kind": "set", "dim": 128, "hidden": 256},
        "hypernet": {"kind": "mlp", "hidden": [256]},
        "gates": {"enabled": gated, "sparsity": sparsity if gated else 0.0,
                  "mode": mode if gated else "units", "estimator": estimator,
                  "warmup_steps": warmup if gated else 0, **(head or {} if gated else {})},
        "train": {"steps": steps, "meta_batch": 25, "lr": 1e-3, "val_every": 1000,
                  "val_tasks": 200},
    })


def gate_head(args: argparse.Namespace) -> dict[str, Any] | None:
    """The gates.separate_head settings the flags ask for (None: the shared generator)."""
    if not args.separate_head:
        return None
    return {"separate_head": True, "detach": args.detach, "head_lr_scale": args.head_lr_scale}


def omniglot_config(gated: bool, steps: int, sparsity: float, seed: int,
                    mode: str, estimator: str = "hard_concrete", warmup: int = 0) -> RunConfig:
    return RunConfig.from_file(ROOT / "configs" / "omniglot_hypernet_film.yaml", [
        "tasks.ways=5", "tasks.shots=1", "tasks.queries=15", f"seed={seed}",
        f"train.steps={steps}", f"train.val_every={max(steps // 4, 1)}",
        f"gates.enabled={str(gated).lower()}", f"gates.sparsity={sparsity if gated else 0.0}",
        f"gates.mode={mode if gated else 'units'}", f"gates.estimator={estimator}",
        f"gates.warmup_steps={warmup if gated else 0}"])


def run_omniglot(args: argparse.Namespace, tag: str, deadline: float,
                 env: dict[str, Any]) -> None:

    runs = ROOT / "benchmarks" / "runs" / ("structure-smoke" if args.smoke else "structure")
    path = result_path("structure", f"omniglot-{tag}", smoke=args.smoke)
    test = get_tasks("omniglot", data_dir=args.data_dir, ways=5, shots=1, queries=15).fixed_tasks(
        "test", 20 if args.smoke else 600)
    models, per_task = {}, {}
    for name, gated in (("gated", True), ("ungated", False)):
        run_name = (f"omniglot-gated-{tag}-n{args.steps}" if gated
                    else f"omniglot-ungated-n{args.steps}")
        conf = omniglot_config(gated, args.steps, args.sparsity, args.seed, args.gate_mode,
                               args.estimator, args.warmup_steps)
        if train_in_chunks(conf, runs / run_name, deadline, chunk=250) is None:
            write_result(path, {"benchmark": "structure", "complete": False, "summary": {},
                                "environment": env, "config": vars(args)})
            print(f"budget used; rerun to continue ({path})")
            sys.exit(3)
        model = load_run(runs / run_name).learner
        models[name] = model
        scores = []
        for start in range(0, test.num_tasks, 25):
            chunk = test.slice(start, start + 25)
            assert chunk.query_y is not None
            scores.append(get_kind("classification").per_task_metric(model.predict(chunk),
                                                                     chunk.query_y))
        per_task[name] = torch.cat(scores)
    acc = {name: summarize(values) for name, values in per_task.items()}  # no second pass
    example = test.query_x[0]
    full = models["ungated"].generate(test.task(0))[0]
    full_flops = count_flops(full, example)
    flops = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, test.num_tasks, 25):
            for net in models["gated"].generate(test.slice(start, start + 25)):
                flops.append(count_flops(net, example))
    difficulty = (1 - per_task["ungated"]).tolist()  # the ungated model's error per task
    summary = {
        "flops_reduction": 1 - statistics.mean(flops) / full_flops,
        "acc_gated": 100 * acc["gated"]["mean"], "acc_ungated": 100 * acc["ungated"]["mean"],
        "acc_loss_points": 100 * (acc["ungated"]["mean"] - acc["gated"]["mean"]),
        "ci95_gated": 100 * acc["gated"]["ci95"], "ci95_ungated": 100 * acc["ungated"]["ci95"],
        "difficulty_spearman": spearman(difficulty, flops),
        "flops_ungated": full_flops, "flops_gated_min": min(flops),
        "flops_gated_max": max(flops),
    }
    write_result(path, {"benchmark": "structure", "family": "omniglot", "complete": True,
                        "summary": summary, "config": vars(args), "environment": env,
                        "protocol": "5-way 1-shot, 15 queries per class, train characters; "
                                    "600 fixed test episodes; difficulty = ungated error"})
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


def ranks(values: list[float]) -> np.ndarray:
    """Ranks with ties sharing their average rank."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="stable")
    out = np.empty(len(array))
    out[order] = np.arange(len(array), dtype=float)
    for value in np.unique(array):
        tied = array == value
        out[tied] = out[tied].mean()
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is
    constant (undefined)."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--sparsity", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gate-mode", choices=["units", "width"], default="units",
                        help="units: a gate logit per unit; width: one open fraction per layer")
    parser.add_argument("--estimator", choices=["hard_concrete", "deterministic", "ste"],
                        default="hard_concrete", help="gates in training (gates.estimator)")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="steps with every gate open and no sparsity cost first")
    parser.add_argument("--separate-head", action="store_true",
                        help="gates from their own small generator (gates.separate_head)")
    parser.add_argument("--detach", action="store_true",
                        help="with --separate-head: gate losses never reach the encoder")
    parser.add_argument("--head-lr-scale", type=float, default=1.0,
                        help="with --separate-head: its learning rate over the run's")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="mixed family: weight of distillation from the ungated run")
    parser.add_argument("--family", choices=["mixed", "omniglot"], default="mixed")
    parser.add_argument("--data-dir", default=os.environ.get("HYPERMETA_DATA"),
                        help="for --family omniglot: the folder holding omniglot/")
    parser.add_argument("--budget-minutes", type=float, default=9.0)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.steps = 200 if args.family == "mixed" else 20
    deadline = time.time() + 60 * args.budget_minutes
    env = environment([args.seed])
    tag = f"l{args.sparsity:g}" if args.gate_mode == "units" else f"width-l{args.sparsity:g}"
    if args.estimator != "hard_concrete":
        tag += f"-{args.estimator}"
    if args.warmup_steps:
        tag += f"-w{args.warmup_steps}"
    if args.separate_head:
        tag += f"-head{'-detach' if args.detach else ''}-lr{args.head_lr_scale:g}"
    if args.distill:
        tag += f"-distill{args.distill:g}"
    if args.family == "omniglot":
        if args.data_dir is None:
            parser.error("--family omniglot needs --data-dir or HYPERMETA_DATA")
        os.environ["HYPERMETA_DATA"] = args.data_dir  # the run configs stay machine-free
        run_omniglot(args, tag, deadline, env)
        return
    runs = ROOT / "benchmarks" / "runs" / ("structure-smoke" if args.smoke else "structure")
    path = result_path("structure", f"mixed-{tag}" + (f"-s{args.seed}" if args.seed else ""),
                       smoke=args.smoke)
    results: dict[str, Any] = {}
    seed_tag = f"-s{args.seed}" if args.seed else ""
    teacher = runs / f"ungated-n{args.steps}{seed_tag}"
    # with --distill the ungated run trains first: it is the gated run's teacher
    order = (("ungated", False), ("gated", True)) if args.distill else (("gated", True),
                                                                        ("ungated", False))
    for name, gated in order:
        run_name = f"gated-{tag}-n{args.steps}{seed_tag}" if gated else teacher.name
        head = gate_head(args) or {}
        if gated and args.distill:
            head = {**head, "distill_from": str(teacher), "distill_weight": args.distill}
        if train_in_chunks(config(gated, args.steps, args.sparsity, args.seed, args.gate_mode,
                                  args.estimator, args.warmup_steps, head),
                           runs / run_name, deadline) is None:
            write_result(path, {"benchmark": "structure", "complete": False, "summary": {},
                                "environment": env, "config": vars(args)})
            print(f"budget used; rerun to continue ({path})")
            sys.exit(3)
        loaded = load_run(runs / run_name)
        model, tasks = loaded.learner, loaded.tasks
        test = tasks.fixed_tasks("test")
        with torch.no_grad():
            mse = get_kind("regression").per_task_metric(model.predict(test), test.query_y)
        results[name] = {"model": model, "mse": mse}
    test = tasks.fixed_tasks("test")
    kinds = test.descriptor[:, 0].long()  # type: ignore[index]
    example = torch.zeros(100, 1)
    ungated_net = build_network(config(False, 1, 0, 0).target.model_dump())
    full_flops = count_flops(ungated_net, example)
    full_params = sum(p.numel() for p in ungated_net.parameters())
    flops, params, hidden = [], [], []
    gated_model = results["gated"]["model"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a site that would close entirely keeps one unit
        for start in range(0, test.num_tasks, 100):
            nets = gated_model.generate(test.slice(start, start + 100))
            for net in nets:
                flops.append(count_flops(net, example))
                params.append(sum(p.numel() for p in net.parameters()))
                hidden.append(net.config["hidden"])
    flops_t = torch.tensor(flops, dtype=torch.float64)
    per_kind = {}
    for k, kind in enumerate(FUNCTIONS):
        mask = kinds == k
        per_kind[kind] = {
            "difficulty_rank": k, "tasks": int(mask.sum()),
            "mean_flops": float(flops_t[mask].mean()),
            "mean_params": float(torch.tensor(params, dtype=torch.float64)[mask].mean()),
            "mean_hidden": np.mean([hidden[i] for i in mask.nonzero().flatten().tolist()],
                                   axis=0).tolist(),
            "mse_gated": float(results["gated"]["mse"][mask].mean()),
            "mse_ungated": float(results["ungated"]["mse"][mask].mean()),
        }
    mse_gated = float(results["gated"]["mse"].mean())
    mse_ungated = float(results["ungated"]["mse"].mean())
    summary = {
        "flops_reduction": 1 - float(flops_t.mean()) / full_flops,
        "rel_mse_loss": (mse_gated - mse_ungated) / mse_ungated,
        "difficulty_spearman": spearman(list(range(len(FUNCTIONS))),
                                        [per_kind[k]["mean_flops"] for k in FUNCTIONS]),
        "mse_gated": mse_gated, "mse_ungated": mse_ungated,
        "mean_params_gated": statistics.mean(params), "params_ungated": full_params,
        "flops_ungated": full_flops,
    }
    payload = {"benchmark": "structure", "complete": True, "summary": summary,
               "per_kind": per_kind, "config": vars(args), "environment": env}
    write_result(path, payload)
    print(json.dumps(summary, indent=1))
    print(json.dumps({k: {m: v[m] for m in ("mean_flops", "mean_hidden", "mse_gated",
                                             "mse_ungated")} for k, v in per_kind.items()},
                     indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
