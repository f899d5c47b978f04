"""Continual learning: the task-conditioned hypernetwork vs hypnettorch, EWC, SI, fine-tuning,
separate networks and joint training, on PermutedFashionMNIST-10 and SplitFashionMNIST-5.

Protocol (every method, same loop, data, batches and budget): the target is an MLP
784-256-256-C (C = 10 permuted, 2 split; the baselines get a head per task on a shared trunk,
the hypernetworks generate the whole network per task); ``--steps`` Adam steps per task (1000;
batch 128, lr 1e-3, a fresh optimizer per task); accuracy on each task's full test set after
every task. ``joint`` trains one multi-head network on all tasks at once for the same total
number of steps (the upper bound). Hyperparameters from the papers: beta = 0.1 permuted / 0.01
split (von Oswald et al. 2020's classifier values) for both hypernetworks, SI c = 0.1 permuted /
1.0 split with xi = 1e-3 (Zenke et al. 2017); EWC's lambda (no published value for these sets)
is chosen per scenario from ``EWC_GRID`` on a validation split (10% of each task's training
data, seed 0). hypnettorch runs with the paper's learning rates (1e-4 permuted, 1e-3 split;
with 1e-3 on permuted its first task stayed at chance). What differs from von Oswald et al.:
1000 steps per task instead of 5000 (2000 split), for ours lr 1e-3 instead of 1e-4 on permuted,
an MLP 256-256 instead of 1000-1000 (400-400 split), and one hypernetwork shape for both. Our
hypernetwork: chunked, 32-d task and chunk embeddings, hidden [100, 100], chunk 2000; hypnettorch's
``ChunkedHMLP`` gets the same sizes (its parameter count is reported beside ours).

    benchmarks/hypnettorch_env.sh                  # once: hypnettorch in its own virtualenv
    python benchmarks/continual.py                 # resumable: rerun until complete
    python benchmarks/continual.py --smoke         # tiny budget, *-smoke.json

Each call works at most --budget-minutes (default 9), one task at a time; runs live in
benchmarks/runs/continual/ (git-ignored). Result: results/continual-cpu.json with
``summary.acc.<scenario>.<method>``, ``summary.bwt...`` (percent, mean over seeds; BWT negative =
forgetting), ``summary.param_ratio.hypernet``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ResumableBenchmark, environment, publish  # noqa: E402

from hypermeta.continual import ContinualConfig, Scenario, train_continual  # noqa: E402
from hypermeta.continual.run import draw_matrix, load_scenario  # noqa: E402

# beta: von Oswald et al.'s classifier hypernetwork values (hypercl, mnist/train_args_default.py:
# permuted 0.1, split 0.01); SI c: Zenke et al. (permuted 0.1, split 1.0)
# hnt_lr: the paper's learning rate for the hypnettorch baseline (permuted 1e-4, split 1e-3);
# every other method, ours included, uses 1e-3
SCENARIOS = {"permuted_fmnist": {"num_tasks": 10, "steps": 1000, "si_c": 0.1, "beta": 0.1,
                                 "hnt_lr": 1e-4},
             "split_fmnist": {"num_tasks": 5, "steps": 1000, "si_c": 1.0, "beta": 0.01,
                              "hnt_lr": 1e-3}}
METHODS = ("hypernet", "hypnettorch", "ewc", "si", "finetune", "separate", "joint")
EWC_GRID = (10.0, 100.0, 1000.0, 10000.0)
HNT_VENV = ROOT / "benchmarks" / ".venv-hypnettorch" / "bin" / "python"
HNT_SCRIPT = ROOT / "benchmarks" / "continual_hypnettorch.py"


def config(scenario: str, method: str, seed: int, steps: int, *, ewc_lambda: float = 100.0,
           val: bool = False) -> ContinualConfig:
    spec = SCENARIOS[scenario]
    return ContinualConfig.from_dict({
        "seed": seed,
        "continual": {"scenario": scenario, "num_tasks": spec["num_tasks"], "method": method,
                      "steps_per_task": steps, "batch_size": 128, "lr": 1e-3,
                      "beta": spec["beta"],
                      "ewc_lambda": ewc_lambda, "si_c": spec["si_c"],
                      "val_fraction": 0.1 if val else 0.0,
                      "task_inference": method == "hypernet"},
        "target": {"hidden": [256, 256]},
        "hypernet": {"embedding_dim": 32, "chunk_size": 2000, "chunk_dim": 32,
                     "hidden": [100, 100]}})


class Benchmark(ResumableBenchmark):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "continual")

    def steps(self, scenario: str) -> int:
        return self.args.steps or SCENARIOS[scenario]["steps"]

    def run(self, cfg: ContinualConfig, name: str) -> dict[str, Any] | None:
        """Train task by task until done or past the deadline (-> None: resume later)."""
        while time.time() < self.deadline:
            result = train_continual(cfg, self.runs / name, max_tasks=1)
            if result.complete:
                return result.to_dict()
        return None

    def ewc_lambda(self, scenario: str) -> float | None:
        chosen = self.state.setdefault("ewc_lambda", {})
        if scenario in chosen:
            return float(chosen[scenario]["lambda"])
        scores = chosen.setdefault(f"{scenario}-grid", {})
        for lam in EWC_GRID:
            if str(lam) in scores:
                continue
            out = self.run(config(scenario, "ewc", 0, self.steps(scenario), ewc_lambda=lam,
                                  val=True), f"{scenario}-ewc-val-l{lam:g}")
            if out is None:
                return None
            scores[str(lam)] = out["acc"]
            self.save()
        best = max(scores, key=lambda k: scores[k])
        chosen[scenario] = {"lambda": float(best), "val_acc": scores}
        self.save()
        return float(best)

    def hypnettorch(self, scenario: str, seed: int) -> dict[str, Any] | None:
        name = f"{scenario}-hypnettorch-s{seed}"
        out_file = self.runs / name / "result.json"
        if out_file.exists():
            return dict(json.loads(out_file.read_text()))
        if not HNT_VENV.exists():
            raise SystemExit(f"{HNT_VENV} is missing: run benchmarks/hypnettorch_env.sh first")
        if time.time() > self.deadline:
            return None
        cfg = config(scenario, "hypernet", seed, self.steps(scenario))
        (self.runs / name).mkdir(parents=True, exist_ok=True)
        data = self.runs / name / "scenario.npz"
        export(load_scenario(cfg), data)
        c, h = cfg.continual, cfg.hypernet
        settings = {"seed": seed, "threads": torch.get_num_threads(),
                    "steps_per_task": c.steps_per_task, "batch_size": c.batch_size,
                    "lr": SCENARIOS[scenario]["hnt_lr"],
                    "beta": c.beta, "hidden": cfg.target.hidden, "chunk_size": h.chunk_size,
                    "chunk_dim": h.chunk_dim, "embedding_dim": h.embedding_dim,
                    "hnet_hidden": h.hidden}
        (self.runs / name / "config.json").write_text(json.dumps(settings))
        subprocess.run([str(HNT_VENV), str(HNT_SCRIPT), "--data", str(data), "--config",
                        str(self.runs / name / "config.json"), "--out", str(out_file)],
                       check=True)
        data.unlink()
        return dict(json.loads(out_file.read_text()))

    def unit(self, scenario: str, method: str, seed: int) -> dict[str, Any] | None:
        key = f"{scenario}-{method}-s{seed}"
        if key in self.state.get("units", {}):
            return dict(self.state["units"][key])
        if method == "hypnettorch":
            out = self.hypnettorch(scenario, seed)
        else:
            lam = self.ewc_lambda(scenario) if method == "ewc" else 100.0
            if lam is None:
                return None
            out = self.run(config(scenario, method, seed, self.steps(scenario), ewc_lambda=lam),
                           key)
        if out is None:
            return None
        unit = {"scenario": scenario, "method": method, "seed": seed, **out}
        self.state.setdefault("units", {})[key] = unit
        self.save()
        return unit


def export(scenario: Scenario, path: Path) -> None:
    """The scenario as uint8 arrays for the hypnettorch process (inputs are k/255 exactly)."""
    arrays: dict[str, np.ndarray] = {"num_tasks": np.array(len(scenario)),
                                     "classes": np.array([t.classes for t in scenario.tasks])}
    for t, task in enumerate(scenario.tasks):
        arrays[f"x_train_{t}"] = (task.x_train * 255).round().to(torch.uint8).numpy()
        arrays[f"y_train_{t}"] = task.y_train.numpy()
        arrays[f"x_test_{t}"] = (task.x_test * 255).round().to(torch.uint8).numpy()
        arrays[f"y_test_{t}"] = task.y_test.numpy()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def summary(units: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"acc": {}, "bwt": {}, "acc_std": {}, "task_inferred_acc": {},
                           "param_ratio": {}}
    for scenario in SCENARIOS:
        for key in ("acc", "bwt", "acc_std"):
            out[key][scenario] = {}
        for method in METHODS:
            rows = [units.get(f"{scenario}-{method}-s{s}") for s in seeds]
            if any(r is None for r in rows):
                continue
            accs = [r["acc"] for r in rows]
            out["acc"][scenario][method] = round(statistics.mean(accs), 2)
            out["acc_std"][scenario][method] = round(statistics.stdev(accs), 2) \
                if len(accs) > 1 else 0.0
            bwts = [r["bwt"] for r in rows]
            out["bwt"][scenario][method] = None if any(b is None for b in bwts) \
                else round(statistics.mean(bwts), 2)
            if method == "hypernet" and all(r.get("inferred") for r in rows):
                out["task_inferred_acc"][scenario] = round(statistics.mean(
                    r["inferred"]["acc"] for r in rows), 2)
            if method in ("hypernet", "hypnettorch") and scenario == "permuted_fmnist":
                out["param_ratio"][method] = round(rows[0]["param_count"]
                                                   / rows[0]["target_param_count"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per task (default: 1000)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="train only these (the result reports every finished unit)")
    parser.add_argument("--budget-minutes", type=float, default=9.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.steps, args.seeds = args.steps or 20, "0"
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {list(METHODS)}")
    bench = Benchmark(args)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if sorted(set(scenarios) - set(SCENARIOS)):
        parser.error(f"unknown scenarios {scenarios}; known: {list(SCENARIOS)}")
    for seed in seeds:
        for scenario in scenarios:
            for method in methods:
                bench.unit(scenario, method, seed)
    # the result covers the whole protocol: complete only when every unit of it is done
    finished = bench.state.get("units", {})
    units = {f"{scenario}-{method}-s{seed}": finished.get(f"{scenario}-{method}-s{seed}")
             for seed in seeds for scenario in SCENARIOS for method in METHODS}
    complete = all(v is not None for v in units.values())
    done = {k: v for k, v in units.items() if v is not None}
    payload: dict[str, Any] = {
        "benchmark": "continual", "complete": complete,
        "protocol": {"scenarios": SCENARIOS, "steps_per_task_override": args.steps,
                     "batch_size": 128, "lr": 1e-3, "optimizer": "Adam, fresh per task",
                     "target": "MLP 784-256-256-C", "si_xi": 1e-3,
                     "ewc": "online (gamma = 1), lambda chosen on 10% validation split, seed 0",
                     "ewc_lambda": bench.state.get("ewc_lambda", {}),
                     "hypernet": "chunked: chunk 2000, chunk/task embeddings 32, hidden 100-100",
                     "baseline_heads": "a head per task on a shared trunk",
                     "differences": "hypnettorch: the paper's learning rate (1e-4 permuted, "
                                    "1e-3 split; 1e-3 for every other method), its default "
                                    "init (as its hypercl example); ours scales each generated "
                                    "tensor by a fixed per-tensor factor (He std for weights, "
                                    "0.1/sqrt(fan_in) for biases) for the whole run, "
                                    "hypnettorch only initialises; joint trains one task's "
                                    "batch per step"},
        "environment": environment(seeds),
    }
    payload["summary"] = summary(done, seeds)
    publish("continual", payload, units, smoke=args.smoke)
    if complete and not args.smoke:
        plot(done, seeds[0], ROOT / "benchmarks" / "results" / "continual-cpu.png")


def plot(units: dict[str, Any], seed: int, out: Path) -> None:
    """Accuracy on every task after each new task, PermutedFashionMNIST-10, one seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("hypernet", "hypnettorch", "ewc", "si", "finetune", "separate")
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharey=True)
    for ax, method in zip(axes.flat, shown):
        unit = units[f"permuted_fmnist-{method}-s{seed}"]
        draw_matrix(ax, unit["matrix"], f"{method}: {unit['acc']:.1f}% avg, BWT "
                    f"{unit['bwt']:+.1f}")
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"PermutedFashionMNIST-10, seed {seed}: accuracy on each task after each new "
                 "task")
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
