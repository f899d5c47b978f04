"""Tasks/second of one meta-step (forward + backward): batched (vmap) vs a per-task loop.

Arm "batched": encoder, hypernetwork and target each run once for all T tasks (the target
through one vmapped functional_call). Arm "loop": the same modules called task by task, the way
other hypernetwork libraries are used (generate one task's weights, run the target with them,
accumulate the loss), with one backward at the end. Neither arm runs HyperModel's input
validation, so only the execution strategy differs. Repeats are interleaved; medians reported.

    python benchmarks/generation.py            # headline: results/generation-cpu-t<threads>.json
    python benchmarks/generation.py --smoke    # quick check, written to a *-smoke.json file
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, interleaved_medians, result_path, write_result  # noqa: E402

from hypermeta import MLP, Conv4, Episode, FunctionalTarget, MLPHyperNet, SetEncoder  # noqa: E402


def setup(target_name: str, meta_batch: int, generator: torch.Generator):
    if target_name == "mlp":  # 1-40-40-1 regressor, K = 10 support, 10 query points
        target = FunctionalTarget(MLP(1, 1, hidden=(40, 40)))
        encoder = SetEncoder(1, 1, 64, hidden=128)
        shots, queries, x_shape = 10, 10, (1,)
        support_y = torch.randn(meta_batch, shots, 1, generator=generator)
    else:  # conv4 on 28x28, 5-way 1-shot support, 5 queries per class
        target = FunctionalTarget(Conv4(in_channels=1, num_classes=5, hidden=64, image_size=28))
        encoder = SetEncoder(28 * 28, 5, 64, hidden=128, num_classes=5)
        shots, queries, x_shape = 5, 25, (1, 28, 28)
        support_y = torch.arange(5).repeat(meta_batch, 1)
    hypernet = MLPHyperNet(target.spec, 64, hidden=(128,))
    query_y = (torch.randn(meta_batch, queries, 1, generator=generator) if target_name == "mlp"
               else torch.randint(0, 5, (meta_batch, queries), generator=generator))
    episode = Episode(torch.randn(meta_batch, shots, *x_shape, generator=generator), support_y,
                      torch.randn(meta_batch, queries, *x_shape, generator=generator), query_y)
    return target, encoder, hypernet, episode


def loss_fn(target_name: str, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if target_name == "mlp":
        return ((pred - y) ** 2).mean()
    return torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))


def arms(target_name: str, target, encoder, hypernet, episode):
    modules = torch.nn.ModuleList([target, encoder, hypernet])

    def batched() -> None:
        params = hypernet(encoder(episode))  # {name: (T, *shape)}
        pred = target(params, episode.query_x)  # one vmapped call: (T, Q, out)
        loss_fn(target_name, pred, episode.query_y).backward()
        modules.zero_grad(set_to_none=True)

    def loop() -> None:
        total = 0.0
        shared = target.shared_tensors()
        for i in range(episode.num_tasks):
            one = episode.task(i)
            params = hypernet(encoder(one))  # {name: (1, *shape)}
            weights = {**shared, **{n: p[0] for n, p in params.items()}}
            pred = functional_call(target.module, weights, (one.query_x[0],))
            total = total + loss_fn(target_name, pred[None], one.query_y)
        (total / episode.num_tasks).backward()
        modules.zero_grad(set_to_none=True)

    return {"batched": batched, "loop": loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--targets", nargs="+", default=["mlp", "conv4"],
                        choices=["mlp", "conv4"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny run, *-smoke.json")
    args = parser.parse_args()
    if args.smoke:
        args.meta_batches, args.repeats = [1, 8], 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    env = environment([args.seed])  # recorded before the run: code state and load as it began
    rows = []
    for target_name in args.targets:
        for meta_batch in args.meta_batches:
            parts = setup(target_name, meta_batch, torch.Generator().manual_seed(args.seed))
            timing = interleaved_medians(arms(target_name, *parts), args.repeats)
            row = {"target": target_name, "meta_batch": meta_batch,
                   "generated_params": parts[0].spec.numel()}
            for arm, t in timing.items():
                row[f"{arm}_tasks_per_s"] = meta_batch / t["median_s"]
                row[f"{arm}_samples_s"] = t["samples_s"]
            row["speedup"] = timing["loop"]["median_s"] / timing["batched"]["median_s"]
            rows.append(row)
            print(f"{target_name:6s} mb={meta_batch:4d} batched {row['batched_tasks_per_s']:9.1f} "
                  f"tasks/s  loop {row['loop_tasks_per_s']:9.1f} tasks/s  "
                  f"speedup {row['speedup']:.2f}x", flush=True)
    summary = {f"speedup_mb{r['meta_batch']}_{r['target']}": round(r["speedup"], 3) for r in rows}
    payload = {"benchmark": "generation", "complete": True, "summary": summary,
               "config": vars(args), "environment": env, "rows": rows}
    path = write_result(result_path("generation", f"cpu-t{args.threads}", smoke=args.smoke),
                        payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
