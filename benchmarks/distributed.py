"""Data-parallel meta-training throughput: 1 process x 1 thread, 1 process x 2 threads and
2 processes x 1 thread (``torchrun --standalone``), same config and steps, on the Omniglot
conv-4 hypernetwork (20-way 1-shot, 5 queries per class; FiLM + per-class head).

Each arm trains ``--steps`` steps of meta-batch ``--meta-batch`` from scratch (one validation
of 20 tasks at the end) in a fresh folder; tasks/s = steps x meta-batch / the run's recorded
training seconds. Arms run one after another (never two at once), ``--rounds`` times in
alternating order; the medians are reported.

On a machine with a CUDA GPU the arms are ``ranks1`` (1 CPU process x 1 thread, the same-machine
baseline) and ``gpu1`` (1 process on the GPU), written to ``distributed-gpu.json``; the CPU
arms go to ``distributed-cpu.json``.

    python benchmarks/distributed.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, parse_args, publish  # noqa: E402

from hypermeta.checkpoint import load_checkpoint  # noqa: E402

CONFIG = ROOT / "configs" / "omniglot_hypernet_film.yaml"


def arm(name: str, args: argparse.Namespace, folder: Path) -> float:
    """One training run of the arm ``name``; returns tasks per second."""
    ranks, threads = {"ranks1": (1, 1), "ranks1_threads2": (1, 2), "ranks2": (2, 1),
                      "gpu1": (1, 1)}[name]
    out = folder / name
    shutil.rmtree(out, ignore_errors=True)
    sets = [f"train.steps={args.steps}", f"train.meta_batch={args.meta_batch}",
            f"train.val_every={args.steps}", "train.val_tasks=20", f"threads={threads}",
            f"device={'cuda' if name == 'gpu1' else 'cpu'}"]
    if args.data_dir:
        sets.append(f"tasks.data_dir={args.data_dir}")
    command = ["-m", "hypermeta", "train", str(CONFIG), "--out", str(out), "--no-progress"]
    for item in sets:
        command += ["--set", item]
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
        str(ranks)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(launcher + command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    _, _, meta = load_checkpoint(out / "last.safetensors")
    seconds = float(meta["state"]["trainer"]["train_seconds"])
    return args.steps * args.meta_batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding omniglot/ "
                        "(default $HYPERMETA_DATA)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parse_args(parser)
    if args.smoke:
        args.steps, args.rounds = 4, 1
    import torch

    gpu = torch.cuda.is_available()
    names = ["ranks1", "gpu1"] if gpu else ["ranks1", "ranks1_threads2", "ranks2"]
    samples: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="hypermeta-dist-") as tmp:
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                samples[name].append(arm(name, args, Path(tmp)))
                print(f"round {r} {name}: {samples[name][-1]:.1f} tasks/s", flush=True)
    rate = {n: round(statistics.median(v), 2) for n, v in samples.items()}
    summary: dict[str, Any] = {"tasks_per_s": rate}
    if gpu:
        summary["gpu1_vs_ranks1"] = round(rate["gpu1"] / rate["ranks1"], 3)
    else:
        summary["scaling_efficiency_2"] = round(rate["ranks2"] / (2 * rate["ranks1"]), 3)
        summary["speedup_vs_best_single"] = round(
            rate["ranks2"] / max(rate["ranks1"], rate["ranks1_threads2"]), 3)
    payload = {"benchmark": "distributed", "complete": True,
               "protocol": {"config": CONFIG.name, "steps": args.steps,
                            "meta_batch": args.meta_batch, "rounds": args.rounds,
                            "backend": "gloo (CPU)" if not gpu else "none (1 process)",
                            "arms": names},
               "samples_tasks_per_s": samples, "environment": environment([0]),
               "summary": summary}
    publish("distributed", payload, {}, smoke=args.smoke, config="gpu" if gpu else "cpu")


if __name__ == "__main__":
    main()
