"""The demo: meta-train a hypernetwork on sinusoid regression (K = 5 and K = 10), evaluate it on
the 1,000 fixed test tasks next to MAML, print the table, and plot a few unseen tasks.

    python examples/sinusoid_demo.py [--out runs/demo] [--steps 5000]

Runs are resumable: rerunning with the same settings reuses finished training.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch

from hypermeta import Episode, ProgressBar, RunConfig, evaluate, fit, get_tasks, load_run


def config(method: str, shots: int, steps: int) -> RunConfig:
    return RunConfig.from_dict({
        "method": method, "seed": 0,
        "tasks": {"name": "sinusoid", "shots": shots, "queries": 10},
        "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "hidden": [40, 40]},
        "encoder": {"kind": "set", "dim": 128, "hidden": 256},
        "hypernet": {"kind": "mlp", "hidden": [256]},
        "train": {"steps": steps, "meta_batch": 25, "lr": 1e-3, "val_every": 500,
                  "val_tasks": 200},
        "maml": {"inner_lr": 0.01, "inner_steps": 1, "test_inner_steps": 10},
        # small steps: with K = 5 points, SGD at 0.01 overfits (the benchmark picks on val)
        "finetune": {"steps": 10, "lr": 0.003},
    })


def plot(models: dict[tuple[str, int], torch.nn.Module], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True)
    grid = torch.linspace(-5, 5, 200)[None, :, None].expand(4, -1, -1)
    for row, shots in enumerate((5, 10)):
        test = get_tasks("sinusoid", shots=shots).fixed_tasks("test", 4)
        theta = test.descriptor
        assert isinstance(theta, torch.Tensor)
        episode = Episode(test.support_x, test.support_y, grid)
        curves = {name: models[(name, shots)].predict(episode).squeeze(-1)
                  for name in ("hypernet", "maml")}
        truth = theta[:, None, :1] * torch.sin(grid - theta[:, None, 1:])
        for t in range(4):
            ax = axes[row, t]
            ax.plot(grid[t, :, 0], truth[t, :, 0], "k-", lw=2, label="true")
            ax.plot(grid[t, :, 0], curves["hypernet"][t], "C0-",
                    label="hypernetwork (+10 fine-tuning steps)")
            ax.plot(grid[t, :, 0], curves["maml"][t], "C1--", label="MAML (10 steps)")
            ax.plot(test.support_x[t, :, 0], test.support_y[t, :, 0], "ko", mfc="w",
                    label=f"support (K={shots})")
            ax.set_title(f"unseen task {t}, K={shots}")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: small models run fastest, and a busy machine "
                             "does not slow them down; see README)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, models = [], {}
    for shots in (5, 10):
        for method in ("hypernet", "maml"):
            run = args.out / f"{method}-k{shots}"
            fit(config(method, shots, args.steps), run,
                callbacks=[ProgressBar()] if args.progress else [])
            loaded = load_run(run)
            learner, tasks = loaded.learner, loaded.tasks
            models[(method, shots)] = learner
            test = tasks.fixed_tasks("test")
            predict = learner.predict
            if method == "hypernet":  # the generated networks as they are, no fine-tuning
                predict = functools.partial(learner.predict, finetune_steps=0)
            result = evaluate(predict, test, "regression")
            label = "hypernetwork" if method == "hypernet" else "MAML, 10 test steps"
            rows.append((shots, label, result))
            if method == "hypernet":
                tuned = evaluate(functools.partial(learner.predict, finetune_steps=10), test,
                                 "regression")  # lr from the config: 0.003
                rows.append((shots, "hypernetwork + 10 fine-tuning steps", tuned))
    print(f"\nSinusoid regression, 1,000 unseen test tasks x 100 points "
          f"({args.steps} meta-steps of 25 tasks each)")
    print(f"{'K':>3}  {'method':<38}{'test MSE':>10}  {'95% CI':>8}")
    for shots, label, result in rows:
        print(f"{shots:>3}  {label:<38}{result['mean']:>10.4f}  ±{result['ci95']:>7.4f}")
    png = args.out / "sinusoid.png"
    plot(models, png)
    print(f"\nplot of unseen tasks: {png}")


if __name__ == "__main__":
    main()
