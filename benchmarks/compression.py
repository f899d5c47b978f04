"""Accuracy against compression: sweep the chunked hypernetwork's size and the delta rank.

Sinusoid K=10, same encoder and budget for every variant; the size ratio is
``HyperModel.parameter_report()["size_ratio"]`` (hypernetwork + shared target
parameters over one 1-40-40-1 target network). Writes results/compression-sinusoid.json and a
PNG of test MSE against that ratio (and each generator's ``compression_ratio`` in the JSON).

    python benchmarks/compression.py            # resumable
    python benchmarks/compression.py --smoke    # tiny budget, *-smoke files
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, result_path, train_in_chunks, write_result  # noqa: E402

from hypermeta import RunConfig, evaluate, load_run  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "mlp-h256": {"hypernet": {"kind": "mlp", "hidden": [256]}},
    "mlp-h32": {"hypernet": {"kind": "mlp", "hidden": [32]}},
    "chunked-c256-h64": {"hypernet": {"kind": "chunked", "chunk_size": 256, "chunk_dim": 16,
                                      "hidden": [64]}},
    "chunked-c64-h32": {"hypernet": {"kind": "chunked", "chunk_size": 64, "chunk_dim": 8,
                                     "hidden": [32]}},
    "chunked-c16-h16": {"hypernet": {"kind": "chunked", "chunk_size": 16, "chunk_dim": 8,
                                     "hidden": [16]}},
    "lowrank-r1": {"adapter": "lowrank", "rank": 1, "hypernet": {"kind": "delta",
                                                                 "hidden": [32]}},
    "lowrank-r4": {"adapter": "lowrank", "rank": 4, "hypernet": {"kind": "delta",
                                                                 "hidden": [32]}},
    "film": {"adapter": "film", "hypernet": {"kind": "delta", "hidden": [32]}},
}


def config(name: str, steps: int) -> RunConfig:
    base: dict[str, Any] = {
        "method": "hypernet", "seed": 0, "tasks": {"name": "sinusoid", "shots": 10},
        "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [40, 40]},
        "encoder": {"kind": "set", "dim": 64, "hidden": 128},
        "train": {"steps": steps, "meta_batch": 25, "lr": 1e-3, "val_every": 1000,
                  "val_tasks": 200},
    }
    return RunConfig.from_dict({**base, **VARIANTS[name]})


def plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in rows.items():
        family = name.split("-")[0]
        marker = {"mlp": "o", "chunked": "s", "lowrank": "^", "film": "D"}[family]
        ax.scatter(row["size_ratio"], row["test_mse"], marker=marker, s=50)
        ax.annotate(name, (row["size_ratio"], row["test_mse"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("size ratio: (hypernet + shared params) / one target network")
    ax.set_ylabel("test MSE, sinusoid K=10 (1,000 tasks)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--budget-minutes", type=float, default=9.0)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.steps = 100
    deadline = time.time() + 60 * args.budget_minutes
    env = environment([0])
    runs = ROOT / "benchmarks" / "runs" / ("compression-smoke" if args.smoke else "compression")
    path = result_path("compression", "sinusoid", smoke=args.smoke)
    rows: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        result = train_in_chunks(config(name, args.steps), runs / name, deadline)
        if result is None:
            break
        loaded = load_run(runs / name)
        model, tasks = loaded.learner, loaded.tasks
        report = model.parameter_report()
        test = evaluate(model.predict, tasks.fixed_tasks("test"), "regression")
        rows[name] = {**report, "test_mse": test["mean"], "test_ci95": test["ci95"],
                      "generator_compression_ratio": model.hypernet.compression_ratio,
                      "train_seconds": result.train_seconds}
        print(f"{name:18s} ratio {report['size_ratio']:8.3f}  MSE {test['mean']:.4f}",
              flush=True)
    complete = len(rows) == len(VARIANTS)
    summary = {name: {"size_ratio": r["size_ratio"], "test_mse": r["test_mse"]}
               for name, r in rows.items()}
    payload = {"benchmark": "compression", "complete": complete, "summary": summary,
               "rows": rows, "config": vars(args), "environment": env}
    write_result(path, payload)
    if complete:
        plot(rows, path.with_suffix(".png"))
    print(json.dumps(summary, indent=1))
    print(f"wrote {path} (complete: {complete})")
    sys.exit(0 if complete else 3)


if __name__ == "__main__":
    main()
