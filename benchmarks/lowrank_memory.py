"""Peak memory of a T-task forward + backward: full generated weights vs low-rank factors.

The target is an MLP with two 1024x1024 hidden Linear layers; the per-task tensors stand in
for a hypernetwork's output (leaf tensors with gradients). "full" generates both 1024x1024
weights for every task (T matrices each); "lowrank" keeps them shared and generates rank-r
factors, applied as two thin products. Each arm runs in a fresh process; we report the growth
of its peak resident memory (ru_maxrss) over the state after building the model.

    python benchmarks/lowrank_memory.py        # results/lowrank_memory-cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, result_path, write_result  # noqa: E402

from hypermeta import FunctionalTarget  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one_arm(adapter: str, tasks: int, rank: int, width: int) -> dict[str, float]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
    target = FunctionalTarget(net, generate=["2.weight", "4.weight"], adapter=adapter, rank=rank)
    x = torch.randn(tasks, 32, 64)
    before = peak_mib()
    params = {n: (torch.randn(tasks, *s) * 0.01).requires_grad_(True)
              for n, s in zip(target.spec.names, target.spec.shapes)}
    target(params, x).square().mean().backward()
    return {"peak_growth_mib": peak_mib() - before,
            "generated_per_task": target.spec.numel(),
            "generated_mib": tasks * target.spec.numel() * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--arm", choices=["full", "lowrank"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:  # child process: one arm, JSON on stdout
        print(json.dumps(one_arm(args.arm, args.tasks, args.rank, args.width)))
        return
    env = environment([0])  # recorded before the run: code state and load as it began
    rows = {}
    for arm in ("full", "lowrank"):
        out = subprocess.run([sys.executable, __file__, "--arm", arm, "--tasks", str(args.tasks),
                              "--rank", str(args.rank), "--width", str(args.width)],
                             capture_output=True, text=True, check=True).stdout
        rows[arm] = json.loads(out.strip().splitlines()[-1])
        print(f"{arm:8s} peak growth {rows[arm]['peak_growth_mib']:8.1f} MiB "
              f"(generated tensors {rows[arm]['generated_mib']:.1f} MiB)")
    summary = {"full_peak_mib": round(rows["full"]["peak_growth_mib"], 1),
               "lowrank_peak_mib": round(rows["lowrank"]["peak_growth_mib"], 1),
               "memory_ratio": round(rows["full"]["peak_growth_mib"]
                                     / max(rows["lowrank"]["peak_growth_mib"], 1e-9), 1)}
    payload = {"benchmark": "lowrank_memory", "complete": True, "summary": summary,
               "config": {k: v for k, v in vars(args).items() if k != "arm"},
               "environment": env, "rows": rows}
    print(f"wrote {write_result(result_path('lowrank_memory', 'cpu', smoke=False), payload)}")


if __name__ == "__main__":
    main()
