"""Does generated structure follow task difficulty? Gated vs ungated hypernetworks on mixed tasks.

Task family ``mixed`` (constant, line, low- and high-frequency sinusoid, sum of both; the kind is
hidden from the model, which reads a K=20 support set). Models with the same architecture
and training budget: per-task gates over the hidden units of a 1-64-64-1 target (sparsity cost
``--sparsity``; the gate flags below pick the controlled variant) and the same without gates,
trained with each of ``--ungated-seeds``; the reference is the ungated run with the lowest val
MSE. On the 1,000 fixed test tasks: MSE of both, and for the gated one the FLOPs
(``FlopCounterMode``) and parameters of each task's pruned network, grouped by kind.
``difficulty_spearman`` ranks every test task's FLOPs against its difficulty, the ungated
reference's MSE on that task (``kind_rank_spearman``: against its kind's rank, constant < line <
low < high frequency < sum); one torch thread unless ``--threads``.

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
                    mode: str, estimator: str = "hard_concrete", warmup: int = 0,
                    head: dict[str, Any] | None = None) -> RunConfig:
    overrides = [f"gates.{k}={json.dumps(v)}" for k, v in (head or {}).items()] if gated else []
    return RunConfig.from_file(ROOT / "configs" / "omniglot_hypernet_film.yaml", [
        "tasks.ways=5", "tasks.shots=1", "tasks.queries=15", f"seed={seed}",
        f"train.steps={steps}", f"train.val_every={max(steps // 4, 1)}",
        f"gates.enabled={str(gated).lower()}", f"gates.sparsity={sparsity if gated else 0.0}",
        f"gates.mode={mode if gated else 'units'}", f"gates.estimator={estimator}",
        f"gates.warmup_steps={warmup if gated else 0}", *overrides])


def run_omniglot(args: argparse.Namespace, tag: str, deadline: float,
                 env: dict[str, Any]) -> None:

    runs = ROOT / "benchmarks" / "runs" / ("structure-smoke" if args.smoke else "structure")
    path = result_path("structure", f"omniglot-{tag}", smoke=args.smoke)
    test = get_tasks("omniglot", data_dir=args.data_dir, ways=5, shots=1, queries=15).fixed_tasks(
        "test", 20 if args.smoke else 600)
    val = get_tasks("omniglot", data_dir=args.data_dir, ways=5, shots=1, queries=15).fixed_tasks(
        "val", 20 if args.smoke else 200)
    models, per_task = {}, {}
    teacher = runs / f"omniglot-ungated-n{args.steps}"
    distill = {"distill_from": str(teacher), "distill_weight": args.distill}
    # the ungated run first: it is the reference and, with --distill, the teacher of the gated
    # run and of an ungated student (gates held open for the whole run), a second reference
    plan: list[tuple[str, str, RunConfig]] = [
        ("ungated", teacher.name, omniglot_config(False, args.steps, 0.0, args.seed, "units"))]
    if args.distill:
        plan.append(("ungated-distilled", f"omniglot-ungated-distill{args.distill:g}"
                                          f"-n{args.steps}",
                     omniglot_config(True, args.steps, 0.0, args.seed, "width",
                                     warmup=args.steps, head=distill)))
    plan.append(("gated", f"omniglot-gated-{tag}-n{args.steps}",
                 omniglot_config(True, args.steps, args.sparsity, args.seed, args.gate_mode,
                                 args.estimator, args.warmup_steps,
                                 {**(gate_head(args) or {}),
                                  **(distill if args.distill else {})})))

    def per_task_accuracy(model: Any, episodes: Any) -> torch.Tensor:
        scores = []
        for start in range(0, episodes.num_tasks, 25):
            chunk = episodes.slice(start, start + 25)
            scores.append(get_kind("classification").per_task_metric(model.predict(chunk),
                                                                     chunk.query_y))
        return torch.cat(scores)

    val_acc = {}
    for name, run_name, conf in plan:
        if train_in_chunks(conf, runs / run_name, deadline, chunk=250) is None:
            write_result(path, {"benchmark": "structure", "complete": False, "summary": {},
                                "environment": env, "config": vars(args)})
            print(f"budget used; rerun to continue ({path})")
            sys.exit(3)
        models[name] = load_run(runs / run_name).learner
        per_task[name] = per_task_accuracy(models[name], test)
        if name != "gated":
            val_acc[name] = float(per_task_accuracy(models[name], val).mean())
    reference = max(val_acc, key=val_acc.__getitem__)  # the better ungated run on val
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
    difficulty = (1 - per_task[reference]).tolist()  # the reference's error per task
    loss = 100 * (acc[reference]["mean"] - acc["gated"]["mean"])
    summary = {
        "omniglot": {"flops_reduction": 1 - statistics.mean(flops) / full_flops,
                     "acc_loss_points": loss},
        "acc_gated": 100 * acc["gated"]["mean"], "ci95_gated": 100 * acc["gated"]["ci95"],
        "acc_ungated": {name: 100 * acc[name]["mean"] for name in val_acc},
        "ci95_ungated": {name: 100 * acc[name]["ci95"] for name in val_acc},
        "ungated_reference": {"run": reference, "val_acc": val_acc},
        "difficulty_spearman": spearman(difficulty, flops), "test_tasks": test.num_tasks,
        "flops_ungated": full_flops, "flops_gated_min": min(flops),
        "flops_gated_max": max(flops),
    }
    write_result(path, {"benchmark": "structure", "family": "omniglot", "complete": True,
                        "summary": summary, "config": vars(args), "environment": env,
                        "protocol": "5-way 1-shot, 15 queries per class, train characters; "
                                    "600 fixed test episodes; reference = the ungated run (with "
                                    "--distill: or its distilled student) more accurate on 200 "
                                    "val episodes; difficulty = its error"})
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
                        help="weight of distillation from the ungated run (its teacher)")
    parser.add_argument("--family", choices=["mixed", "omniglot"], default="mixed")
    parser.add_argument("--data-dir", default=os.environ.get("HYPERMETA_DATA"),
                        help="for --family omniglot: the folder holding omniglot/")
    parser.add_argument("--ungated-seeds", type=lambda v: [int(s) for s in v.split(",")],
                        default=[0, 1, 2], help="mixed family: the reference is the best of "
                        "these ungated runs on val (same budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--budget-minutes", type=float, default=9.0)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.steps = 200 if args.family == "mixed" else 20
        args.ungated_seeds = args.ungated_seeds[:1]
    deadline = time.time() + 60 * args.budget_minutes
    env = environment(sorted({args.seed, *args.ungated_seeds}))
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
    seed_tag = f"-s{args.seed}" if args.seed else ""

    def ungated_run(seed: int) -> Path:
        return runs / (f"ungated-n{args.steps}" + (f"-s{seed}" if seed else ""))

    def train_or_exit(conf: RunConfig, run_dir: Path) -> Any:
        if train_in_chunks(conf, run_dir, deadline) is None:
            write_result(path, {"benchmark": "structure", "complete": False, "summary": {},
                                "environment": env, "config": vars(args)})
            print(f"budget used; rerun to continue ({path})")
            sys.exit(3)
        return load_run(run_dir)

    def mse_of(model: Any, episodes: Any) -> torch.Tensor:
        with torch.no_grad():
            return get_kind("regression").per_task_metric(model.predict(episodes),
                                                          episodes.query_y)

    # the ungated reference: the best (lowest val MSE) of the ungated runs at the same budget;
    # with --distill the seed-0 one is also the gated run's teacher, so they train first, and
    # an ungated student of the same teacher joins the candidates (its gates are held open for
    # the whole run: a plain network trained with the gated run's distillation)
    ungated: dict[str, Any] = {}
    for seed in args.ungated_seeds:
        ungated[f"seed{seed}"] = train_or_exit(config(False, args.steps, 0.0, seed),
                                               ungated_run(seed))
    distill = {"distill_from": str(ungated_run(args.ungated_seeds[0])),
               "distill_weight": args.distill}
    if args.distill:
        ungated[f"seed{args.seed}-distilled"] = train_or_exit(
            config(True, args.steps, 0.0, args.seed, "width", warmup=args.steps, head=distill),
            runs / f"ungated-distill{args.distill:g}-n{args.steps}{seed_tag}")
    head = {**(gate_head(args) or {}), **(distill if args.distill else {})}
    loaded = train_or_exit(config(True, args.steps, args.sparsity, args.seed, args.gate_mode,
                                  args.estimator, args.warmup_steps, head),
                           runs / f"gated-{tag}-n{args.steps}{seed_tag}")
    tasks = loaded.tasks
    val, test = tasks.fixed_tasks("val"), tasks.fixed_tasks("test")
    val_mse = {name: float(mse_of(run.learner, val).mean()) for name, run in ungated.items()}
    best = min(val_mse, key=val_mse.__getitem__)
    per_task_mse = {name: mse_of(run.learner, test) for name, run in ungated.items()}
    test_mse = {name: float(mse.mean()) for name, mse in per_task_mse.items()}
    results = {"gated": {"model": loaded.learner, "mse": mse_of(loaded.learner, test)},
               "ungated": {"model": ungated[best].learner, "mse": per_task_mse[best]}}
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
    kind_rank = kinds.tolist()  # the kind's rank in the family: easiest (constant) first
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
        # per test task: its FLOPs against its difficulty, the ungated reference's MSE on it
        # (as for Omniglot); and against its kind's rank in the family (ties share a rank)
        "difficulty_spearman": spearman(results["ungated"]["mse"].tolist(), flops),
        "kind_rank_spearman": spearman(kind_rank, flops),
        "test_tasks": test.num_tasks,
        "kind_mean_spearman": spearman(list(range(len(FUNCTIONS))),
                                       [per_kind[k]["mean_flops"] for k in FUNCTIONS]),
        "mse_gated": mse_gated, "mse_ungated": mse_ungated,
        "ungated_reference": {"run": best, "val_mse": val_mse, "test_mse": test_mse},
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
