"""Where the sinusoid model's time goes, and whether ``torch.compile`` pays: the measurements
behind the README's speed notes, in one run (shipped ``configs/sinusoid_hypernet.yaml``,
freshly initialised: speed does not depend on the weights; 1 thread for adaptation, 2 for
training).

* ``adapt_ms``: the fast path eager vs ``prepare_inference(compile=True)`` after its warm-up
  (compile seconds recorded), 200 new K = 10 tasks each, the arms alternating in blocks of 25;
* ``breakdown_ms``: the fast path's parts on one task (lean validation, encoder + generator
  chain, cutting the vector + the target, output check), medians of 500 repeats;
* ``train_tasks_per_s``: meta-training steps (meta-batch 25, sampling included) eager vs the
  model's loss through ``torch.compile``, 5 alternating rounds of 60 steps, medians.

    python benchmarks/speed_profile.py
    python benchmarks/speed_profile.py --train-rate   # prints fit's tasks/s only (any version:
        # PYTHONPATH=OTHER_CHECKOUT/src python benchmarks/speed_profile.py --train-rate)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, parse_args, publish  # noqa: E402

from hypermeta import RunConfig, fit  # noqa: E402
from hypermeta.episodes import Episode  # noqa: E402

CONFIG = ROOT / "configs" / "sinusoid_hypernet.yaml"


def train_rate(steps: int) -> float:
    """``fit``'s own tasks/s for ``steps`` fresh steps at 2 threads (no option newer versions
    added, so another checkout's code can run it)."""
    config = RunConfig.from_file(CONFIG, [f"train.steps={steps}", "train.val_tasks=1",
                                          f"train.val_every={steps}", "threads=2"])
    with tempfile.TemporaryDirectory(prefix="hypermeta-speed-") as folder:
        result = fit(config, Path(folder) / "run")
    return steps * config.train.meta_batch / result.train_seconds


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rate", action="store_true", help="only fit's tasks/s")
    args = parse_args(parser)
    if args.train_rate:
        print(json.dumps({"tasks_per_s": train_rate(600)}))
        return
    from hypermeta.fast import _finite_sum
    from hypermeta.runs import build_learner, build_tasks

    config = RunConfig.from_file(CONFIG)
    tasks = build_tasks(config)
    model = build_learner(config, tasks).eval()
    test = tasks.fixed_tasks("test", 200)
    episodes = [Episode(test.support_x[i:i + 1].clone(), test.support_y[i:i + 1].clone(),
                        test.query_x[i:i + 1].clone()) for i in range(test.num_tasks)]
    torch.set_num_threads(1)
    eager = model.prepare_inference()
    started = time.perf_counter()
    compiled = model.prepare_inference(compile=True)
    compiled(episodes[0])
    compile_s = time.perf_counter() - started
    arms = {"eager": eager, "compiled": compiled}
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for b, first in enumerate(range(0, len(episodes), 25)):
        for name in list(arms) if b % 2 == 0 else list(arms)[::-1]:
            for episode in episodes[first:first + 25]:
                start = time.perf_counter()
                arms[name](episode)
                samples[name].append(time.perf_counter() - start)
    adapt = {name: 1000 * statistics.median(s) for name, s in samples.items()}

    one = episodes[0]
    sx, sy, qx = one.support_x, one.support_y, one.query_x
    with torch.inference_mode():
        flat = eager._lean_flat(sx, sy)
        out = eager(one)
        breakdown = {
            "lean_validation": median_ms(lambda: eager._accepts(one), 500),
            "encoder_generator_chain": median_ms(lambda: eager._lean_flat(sx, sy), 500),
            "cut_and_target": median_ms(lambda: model.target.run(eager._cut(flat), qx), 500),
            "output_check": median_ms(lambda: _finite_sum(out), 500),
            "whole": median_ms(lambda: eager(one), 500)}

    torch.set_num_threads(2)
    kind = tasks.kind

    def trainer(compile_loss: bool) -> Callable[[], None]:
        learner = copy.deepcopy(model).train()
        params = [p for p in learner.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
        generator = torch.Generator().manual_seed(0)

        def loss_of(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
                    qy: torch.Tensor) -> torch.Tensor:
            out = learner.outputs(Episode(sx, sy, qx, qy), validate=False)
            return kind.loss(out.pred, qy)

        loss_fn = torch.compile(loss_of, dynamic=False) if compile_loss else loss_of

        def step() -> None:
            episode = tasks.sample("train", 25, generator)
            assert episode.query_y is not None
            loss = loss_fn(episode.support_x, episode.support_y, episode.query_x,
                           episode.query_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    steps = {"eager": trainer(False), "compiled": trainer(True)}
    started = time.perf_counter()
    steps["compiled"]()
    train_compile_s = time.perf_counter() - started
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(5):
        for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            for _ in range(10):
                steps[name]()
            start = time.perf_counter()
            for _ in range(60):
                steps[name]()
            rates[name].append(60 * 25 / (time.perf_counter() - start))
    train = {name: statistics.median(v) for name, v in rates.items()}
    payload = {"benchmark": "speed_profile", "complete": True,
               "protocol": __doc__.split("\n\n")[1], "environment": environment([0]),
               "summary": {"adapt_ms": adapt, "compile_s": compile_s,
                           "breakdown_ms": breakdown, "train_tasks_per_s": train,
                           "train_compile_s": train_compile_s},
               "train_samples": rates}
    publish("speed_profile", payload, {}, smoke=args.smoke)


if __name__ == "__main__":
    main()
