"""hypnettorch's own continual-learning hypernetwork on a scenario exported by continual.py.

Runs inside benchmarks/.venv-hypnettorch (made by benchmarks/hypnettorch_env.sh: hypnettorch
0.0.4 beside torch 2.13.0; nothing of hypermeta is imported here). The recipe is hypnettorch's
examples/hypercl (von Oswald et al. 2020 without lookahead): an ``mnets.MLP`` without weights, a
``hnets.ChunkedHMLP`` with one conditional embedding per task and its default initialisation,
a fresh Adam per task over the shared hypernetwork and the task's own embedding, and
``hnet_regularizer.calc_fix_target_reg`` with targets computed before each task. Data, batches
(the same index draws as hypermeta.continual.run.learn_task), steps, learning rate and beta come
from continual.py.
Its training time excludes evaluation, like hypermeta's.

    benchmarks/.venv-hypnettorch/bin/python benchmarks/continual_hypnettorch.py \
        --data SCENARIO.npz --config CONFIG.json --out RESULT.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from hypnettorch.hnets import ChunkedHMLP
from hypnettorch.mnets import MLP
from hypnettorch.utils import hnet_regularizer as hreg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.config) as handle:
        cfg = json.load(handle)
    torch.set_num_threads(cfg.get("threads", 1))
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    data = np.load(args.data)
    n = int(data["num_tasks"])
    classes = [int(c) for c in data["classes"]]
    tasks = [{k: torch.from_numpy(data[f"{k}_{t}"]) for k in ("x_train", "y_train", "x_test",
                                                              "y_test")} for t in range(n)]
    for task in tasks:  # pixels arrive as uint8 k; hypermeta's inputs are k / 255
        task["x_train"], task["x_test"] = (task["x_train"].float() / 255,
                                           task["x_test"].float() / 255)
    mnet = MLP(n_in=tasks[0]["x_train"].shape[1], n_out=max(classes),
               hidden_layers=cfg["hidden"], no_weights=True, verbose=False)
    hnet = ChunkedHMLP(mnet.param_shapes, chunk_size=cfg["chunk_size"],
                       chunk_emb_size=cfg["chunk_dim"], cond_in_size=cfg["embedding_dim"],
                       layers=cfg["hnet_hidden"], num_cond_embs=n, verbose=False)
    # hypnettorch's default initialisation, as in its examples/hypercl/run.py (its chunked
    # hyperfan init, tried first, left task 0 at chance: 10.0% after 1000 steps)
    hnet_params = sum(p.numel() for p in hnet.parameters())
    mnet_params = int(sum(np.prod(s) for s in mnet.param_shapes))

    def accuracy(t: int) -> float:
        hnet.eval()
        with torch.no_grad():
            weights = hnet.forward(cond_id=t)
            x, y = tasks[t]["x_test"], tasks[t]["y_test"]
            pred = torch.cat([mnet.forward(x[i:i + 2000], weights=weights)[:, :classes[t]]
                              .argmax(1) for i in range(0, len(x), 2000)])
        return 100.0 * float((pred == y).float().mean())

    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    train_seconds = 0.0
    for t in range(n):
        started = time.perf_counter()
        gen = torch.Generator().manual_seed(cfg["seed"] * 100_003 + t)
        x, y = tasks[t]["x_train"], tasks[t]["y_train"]
        rows = torch.randint(0, len(y), (cfg["steps_per_task"], min(cfg["batch_size"], len(y))),
                             generator=gen)
        targets = hreg.get_current_targets(t, hnet) if t > 0 and cfg["beta"] > 0 else None
        # the shared hypernetwork and this task's embedding (earlier ones stay fixed, as in
        # von Oswald et al.'s hypercl code)
        optimizer = torch.optim.Adam([*hnet.unconditional_params, hnet.conditional_params[t]],
                                     lr=cfg["lr"])
        hnet.train()
        for step in range(cfg["steps_per_task"]):
            idx = rows[step]
            optimizer.zero_grad()
            weights = hnet.forward(cond_id=t)
            loss = F.cross_entropy(mnet.forward(x[idx], weights=weights)[:, :classes[t]],
                                   y[idx])
            if targets is not None:
                loss = loss + cfg["beta"] * hreg.calc_fix_target_reg(hnet, t, targets=targets,
                                                                    mnet=mnet)
            loss.backward()
            optimizer.step()
        train_seconds += time.perf_counter() - started
        for j in range(t + 1):
            matrix[t][j] = accuracy(j)
        print(f"task {t}: " + " ".join(f"{v:.1f}" for v in matrix[t][: t + 1]), flush=True)
    last = [float(v) for v in matrix[-1] if v is not None]
    bwt = (sum(float(matrix[-1][j]) - float(matrix[j][j]) for j in range(n - 1)) / (n - 1)
           if n > 1 else None)
    result = {"matrix": matrix, "acc": sum(last) / len(last), "bwt": bwt,
              "param_count": hnet_params, "target_param_count": mnet_params,
              "train_seconds": train_seconds,
              "hypnettorch": "0.0.4", "torch": torch.__version__}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(result, handle, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
