"""Does generated structure follow task difficulty? Gated vs ungated hypernetworks on mixed tasks.

Task family ``mixed`` (constant, line, low- and high-frequency sinusoid, sum of both; the kind is
hidden from the model, which reads a K=20 support set). Two models with the same architecture
and training budget: per-task hard-concrete gates over the hidden units of a 1-64-64-1 target
(sparsity cost ``--sparsity``) and the same without gates. On the 1,000 fixed test tasks:
MSE of both, and for the gated one the FLOPs (``FlopCounterMode``) and parameters of each task's
pruned network, grouped by kind.

    python benchmarks/structure.py [--sparsity 0.02]  # results/structure-mixed-l0.02.json
    python benchmarks/structure.py --smoke    # tiny budget, *-smoke.json
"""

from __future__ import annotations

import argparse
import json
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

from hypermeta.build import load_learner  # noqa: E402
from hypermeta.config import RunConfig  # noqa: E402
from hypermeta.evaluate import per_task_metric  # noqa: E402
from hypermeta.gates import count_flops  # noqa: E402
from hypermeta.networks import build_network  # noqa: E402
from hypermeta.tasks.mixed import KINDS  # noqa: E402


def config(gated: bool, steps: int, sparsity: float, seed: int) -> RunConfig:
    return RunConfig.from_dict({
        "method": "hypernet", "seed": seed,
        "tasks": {"name": "mixed", "shots": 20, "queries": 20},
        "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [64, 64]},
        "encoder": {"kind": "set", "dim": 128, "hidden": 256},
        "hypernet": {"kind": "mlp", "hidden": [256]},
        "gates": {"enabled": gated, "sparsity": sparsity if gated else 0.0},
        "train": {"steps": steps, "meta_batch": 25, "lr": 1e-3, "val_every": 1000,
                  "val_tasks": 200},
    })


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--sparsity", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-minutes", type=float, default=9.0)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.steps = 200
    deadline = time.time() + 60 * args.budget_minutes
    env = environment([args.seed])
    runs = ROOT / "benchmarks" / "runs" / ("structure-smoke" if args.smoke else "structure")
    path = result_path("structure", f"mixed-l{args.sparsity:g}", smoke=args.smoke)
    results: dict[str, Any] = {}
    for name, gated in (("gated", True), ("ungated", False)):
        run_name = f"gated-l{args.sparsity:g}-n{args.steps}" if gated else f"ungated-n{args.steps}"
        if train_in_chunks(config(gated, args.steps, args.sparsity, args.seed),
                           runs / run_name, deadline) is None:
            write_result(path, {"benchmark": "structure", "complete": False, "summary": {},
                                "environment": env, "config": vars(args)})
            print(f"budget used; rerun to continue ({path})")
            sys.exit(3)
        model, _, tasks, _ = load_learner(runs / run_name)
        test = tasks.fixed_tasks("test")
        with torch.no_grad():
            mse = per_task_metric(model.predict(test), test.query_y, "regression")
        results[name] = {"model": model, "mse": mse}
    test = tasks.fixed_tasks("test")
    kinds = test.descriptor[:, 0].long()  # type: ignore[index]
    example = torch.zeros(100, 1)
    ungated_net = build_network(config(False, 1, 0, 0).target)
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
    for k, kind in enumerate(KINDS):
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
        "difficulty_spearman": spearman(list(range(len(KINDS))),
                                        [per_kind[k]["mean_flops"] for k in KINDS]),
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
