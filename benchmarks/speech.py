"""Few-shot spoken-word recognition and speaker adaptation: a hypernetwork-generated GRU vs
ProtoNets (same GRU encoder), first-order MAML, a speaker-independent classifier and DTW.

Words (``tasks.speech.spoken_words``): 150 words x 80 espeak-ng voices, words and voices split
90/20/40 and 40/16/24; 5-way K-shot episodes, 10 queries per class, test words spoken by test
voices only; 600 fixed test episodes. The hypernetwork, ProtoNets and first-order MAML train
``--steps`` steps of ``--meta-batch`` episodes each at K = 1 and K = 5 (the same episodes).

FSDD (real speakers; ``tasks.speech.fsdd``): a task is one speaker, 10-way K-shot, support from
the speaker's takes 5-49, queries = its official test takes 0-4; 20 random support draws per
test speaker (an episode = one draw). Two regimes:
- sim-to-real: the words models trained at K = 5 on synthetic voices, tested on all six FSDD
  speakers; the speaker-independent baseline is a 10-digit GRU classifier trained on the
  synthetic digits of the training voices (the few-shot models never hear a digit);
- leave-one-speaker-out: per held-out speaker, each method trains on the other five speakers
  (``--fsdd-steps`` steps of ``--fsdd-meta-batch`` 10-way 5-shot episodes; the independent
  classifier sees as many clips); one model per fold serves K = 1 and K = 5 (trained at 5).
Accuracy % mean ± 95% CI over episodes. DTW: 1-nearest-neighbour dynamic time warping on the
same log-mel features. Latency: median ms to adapt to one 10-way 5-shot FSDD speaker.

    python benchmarks/speech.py --data-dir ../shared/data   # rerun until it prints "complete"
    python benchmarks/speech.py --data-dir ../shared/data --smoke
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
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
    parse_args,
    publish,
    train_in_chunks,
)

from hypermeta import Episode, RunConfig, get_tasks, load_run  # noqa: E402
from hypermeta.baselines import DTWNearest  # noqa: E402
from hypermeta.evaluate import summarize  # noqa: E402
from hypermeta.networks import GRUNet  # noqa: E402
from hypermeta.tasks.speech import DIGITS  # noqa: E402

METHODS = ("hypernet", "protonet", "fomaml")
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
SHOTS = (1, 5)


def per_episode(predict: Callable[[Episode], Tensor], episodes: Episode,
                batch: int = 20) -> list[float]:
    """Accuracy (%) of each episode."""
    out: list[float] = []
    for start in range(0, episodes.num_tasks, batch):
        chunk = episodes.slice(start, start + batch)
        hits = (predict(chunk).detach().argmax(-1) == chunk.query_y).float().mean(-1)
        out.extend(round(100 * v, 3) for v in hits.tolist())
    return out


def stats(values: list[float]) -> dict[str, float]:
    s = summarize(torch.tensor(values))
    return {"mean": round(s["mean"], 3), "ci95": round(s["ci95"], 3), "tasks": s["tasks"]}


class Benchmark(ResumableBenchmark):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "speech")
        self._episodes: dict[tuple[Any, ...], Episode] = {}
        self._fsdd: dict[str | None, Any] = {}

    # ---------------------------------------------------------------------------- data
    def fsdd(self, speaker: str | None, shots: int = 5) -> Any:
        if (speaker, shots) not in self._fsdd:
            self._fsdd[(speaker, shots)] = get_tasks(  # type: ignore[index]
                "fsdd", data_dir=self.args.data_dir, test_speaker=speaker, shots=shots)
        return self._fsdd[(speaker, shots)]  # type: ignore[index]

    def words_test(self, shots: int) -> Episode:
        key = ("words", shots)
        if key not in self._episodes:
            self._episodes[key] = get_tasks("spoken_words", ways=5, shots=shots,
                                            queries=10).fixed_tasks("test",
                                                                    self.args.test_tasks)
        return self._episodes[key]

    def fsdd_test(self, speaker: str | None, shots: int) -> Episode:
        key = ("fsdd", speaker, shots)
        if key not in self._episodes:
            self._episodes[key] = self.fsdd(speaker, shots).fixed_tasks("test")
        return self._episodes[key]

    # -------------------------------------------------------------------------- training
    def config(self, method: str, overrides: list[str]) -> RunConfig:
        return RunConfig.from_file(ROOT / "configs" / f"speech_{method}.yaml", overrides)

    def trained(self, key: str, config: RunConfig,
                tests: dict[str, Callable[[], Episode]]) -> dict[str, Any] | None:
        units = self.state.setdefault("units", {})
        if key in units:
            return dict(units[key])
        result = train_in_chunks(config, self.runs / key, self.deadline, chunk=100)
        if result is None:
            return None
        run = load_run(self.runs / key)
        out = {"steps_done": result.steps_done, "best_step": result.best_step,
               "best_val": result.best_val, "train_seconds": round(result.train_seconds, 1),
               "content_id": run.content_id,
               "test": {name: per_episode(run.learner.predict, make())
                        for name, make in tests.items()}}
        units[key] = out
        self.save()
        return out

    def words_unit(self, method: str, shots: int) -> dict[str, Any] | None:
        overrides = [f"tasks.shots={shots}", f"train.steps={self.args.steps}",
                     f"train.meta_batch={self.args.meta_batch}",
                     f"train.val_every={max(self.args.steps // 5, 1)}",
                     f"train.val_tasks={self.args.val_tasks}"]
        tests: dict[str, Callable[[], Episode]] = {
            f"words_5w{shots}s": functools.partial(self.words_test, shots)}
        if shots == 5 and method != "fomaml":
            tests["fsdd_sim2real_k5"] = functools.partial(self.fsdd_test, None, 5)
        return self.trained(f"words-{method}-k{shots}", self.config(method, overrides), tests)

    def loso_unit(self, method: str, speaker: str) -> dict[str, Any] | None:
        out_dim = 128 if method == "protonet" else 10
        overrides = ["tasks.name=fsdd", f"tasks.test_speaker={speaker}", "tasks.shots=5",
                     "tasks.queries=10", "tasks.ways=10", f"target.out_dim={out_dim}",
                     f"train.steps={self.args.fsdd_steps}",
                     f"train.meta_batch={self.args.fsdd_meta_batch}",
                     f"train.val_every={max(self.args.fsdd_steps // 5, 1)}",
                     f"train.val_tasks={min(self.args.val_tasks, 50)}"]
        if self.args.data_dir:
            overrides.append(f"tasks.data_dir={self.args.data_dir}")
        tests: dict[str, Callable[[], Episode]] = {
            f"fsdd_loso_k{k}": functools.partial(self.fsdd_test, speaker, k) for k in SHOTS}
        return self.trained(f"loso-{method}-{speaker}", self.config(method, overrides), tests)

    # ------------------------------------------------------------- untrained / supervised
    def independent(self, key: str, x: Tensor, y: Tensor, val_x: Tensor, val_y: Tensor,
                    clips: int, tests: dict[str, Callable[[], Episode]]) -> dict[str, Any]:
        """A 10-class GRU trained on pooled labelled clips (no adaptation): Adam 1e-3,
        batches of 150, ``clips`` clips in all, the best of 5 validations kept."""
        units = self.state.setdefault("units", {})
        if key in units:
            return dict(units[key])
        torch.manual_seed(0)
        net = GRUNet(x.shape[-1], 128, 10)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        steps = max(clips // 150, 1)
        best, best_state = -1.0, net.state_dict()
        generator = torch.Generator().manual_seed(0)
        for step in range(1, steps + 1):
            rows = torch.randint(len(x), (150,), generator=generator)
            loss = F.cross_entropy(net(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % max(steps // 5, 1) == 0 or step == steps:
                with torch.no_grad():
                    acc = float((net(val_x).argmax(-1) == val_y).float().mean())
                if acc > best:
                    best, best_state = acc, {k: v.clone() for k, v in net.state_dict().items()}
        net.load_state_dict(best_state)
        net.eval()

        def predict(episode: Episode) -> Tensor:  # ignores the support set
            logits: Tensor = net(episode.query_x.flatten(0, 1))
            return logits.reshape(*episode.query_x.shape[:2], -1)

        out = {"steps": steps, "best_val": best,
               "test": {name: per_episode(predict, make()) for name, make in tests.items()}}
        units[key] = out
        self.save()
        return out

    def sim2real_independent(self) -> dict[str, Any]:
        digits = get_tasks("spoken_words", ways=10, shots=1, queries=10, digits=True)
        train = torch.tensor(digits.classes["train"])
        val = torch.tensor(digits.classes["val"])
        in_train, in_val = torch.isin(digits.y, train), torch.isin(digits.y, val)
        digit_of = torch.tensor([DIGITS.index(name) if name in DIGITS else -1
                                 for name in digits.labels])  # class id -> digit 0..9
        y = digit_of[digits.y]
        clips = self.args.steps * self.args.meta_batch * 5 * 15
        return self.independent("sim2real-independent", digits.x[in_train], y[in_train],
                                digits.x[in_val], y[in_val], clips,
                                {"fsdd_sim2real_k5": functools.partial(self.fsdd_test, None, 5)})

    def loso_independent(self, speaker: str) -> dict[str, Any]:
        source = self.fsdd(speaker)
        clips = source.clips
        group = torch.as_tensor(clips.group)
        take = torch.as_tensor(clips.take)
        label = torch.as_tensor(clips.label)
        others = torch.isin(group, torch.tensor(source.train_speakers))
        train, val = others & (take >= 5), others & (take < 5)
        budget = self.args.fsdd_steps * self.args.fsdd_meta_batch * 10 * 15
        return self.independent(f"loso-independent-{speaker}", source.x[train], label[train],
                                source.x[val], label[val], budget,
                                {f"fsdd_loso_k{k}": functools.partial(self.fsdd_test, speaker,
                                                                      k) for k in SHOTS})

    def dtw(self, name: str, make: Callable[[], Episode]) -> list[float]:
        cache = self.state.setdefault("dtw", {})
        if name not in cache:
            cache[name] = per_episode(DTWNearest().predict, make(), batch=10)
            self.save()
        return list(cache[name])

    def latency(self) -> dict[str, float]:
        """Median ms to adapt to one 10-way 5-shot FSDD speaker: support clips -> the task's
        generated parameters (hypernet) or prototypes (ProtoNets); ``+predict`` adds the 50
        query predictions."""
        episode = self.fsdd_test(SPEAKERS[0], 5).task(0)
        hyper = load_run(self.runs / f"loso-hypernet-{SPEAKERS[0]}").learner
        proto = load_run(self.runs / f"loso-protonet-{SPEAKERS[0]}").learner
        arms = {"hypernet": functools.partial(hyper.adapted_params, episode),
                "protonet": functools.partial(proto.embedding, episode.support_x.flatten(0, 1)),
                "hypernet+predict": functools.partial(hyper.predict, episode),
                "protonet+predict": functools.partial(proto.predict, episode)}
        with torch.no_grad():
            timing = interleaved_medians(arms, self.args.repeats, warmup=3)
        return {name: round(1000 * t["median_s"], 3) for name, t in timing.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding fsdd/ "
                        "(default $HYPERMETA_DATA)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--fsdd-steps", type=int, default=300)
    parser.add_argument("--fsdd-meta-batch", type=int, default=2)
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--val-tasks", type=int, default=100)
    args = parse_args(parser)
    if args.smoke:
        args.steps, args.fsdd_steps, args.test_tasks, args.val_tasks = 10, 10, 20, 10
        args.repeats = 3
    bench = Benchmark(args)
    runs: dict[str, Any] = {}
    for shots in SHOTS:
        for method in METHODS:
            runs[f"words-{method}-k{shots}"] = bench.words_unit(method, shots)
    speakers = SPEAKERS[:2] if args.smoke else SPEAKERS
    for speaker in speakers:
        for method in ("hypernet", "protonet"):
            runs[f"loso-{method}-{speaker}"] = bench.loso_unit(method, speaker)
    complete = all(v is not None for v in runs.values())
    summary: dict[str, Any] = {"acc": {}, "ci95": {}}
    payload: dict[str, Any] = {
        "benchmark": "speech", "complete": False,
        "protocol": {"words": "spoken_words: 5-way K-shot, 10 queries/class, test words x test "
                              "voices", "words_steps": args.steps,
                     "words_meta_batch": args.meta_batch, "fsdd_steps": args.fsdd_steps,
                     "fsdd_meta_batch": args.fsdd_meta_batch, "test_tasks": args.test_tasks,
                     "fsdd_draws_per_speaker": 20, "front_end": "log-mel 32 x 41 frames, "
                     "0.8 s at 8 kHz, per-utterance normalised",
                     "budget_note": "hypernet, ProtoNets and first-order MAML see the same "
                                    "episodes; the independent classifier as many clips"},
        "environment": environment([0]),
    }
    if complete:
        independent = {"sim2real": bench.sim2real_independent(),
                       **{s: bench.loso_independent(s) for s in speakers}}
        rows: dict[str, dict[str, list[float]]] = {}
        for shots in SHOTS:
            cell = f"words_5w{shots}s"
            rows[cell] = {m: runs[f"words-{m}-k{shots}"]["test"][cell] for m in METHODS}
            rows[cell]["dtw"] = bench.dtw(cell, functools.partial(bench.words_test, shots))
        cell = "fsdd_sim2real_k5"
        rows[cell] = {m: runs[f"words-{m}-k5"]["test"][cell] for m in ("hypernet", "protonet")}
        rows[cell]["independent"] = independent["sim2real"]["test"][cell]
        rows[cell]["dtw"] = bench.dtw(cell, functools.partial(bench.fsdd_test, None, 5))
        for k in SHOTS:
            cell = f"fsdd_loso_k{k}"
            rows[cell] = {m: [v for s in speakers for v in runs[f"loso-{m}-{s}"]["test"][cell]]
                          for m in ("hypernet", "protonet")}
            rows[cell]["independent"] = [v for s in speakers
                                         for v in independent[s]["test"][cell]]
            rows[cell]["dtw"] = [v for s in speakers for v in bench.dtw(
                f"{cell}-{s}", functools.partial(bench.fsdd_test, s, k))]
        for cell, methods in rows.items():
            summary["acc"][cell] = {m: stats(v)["mean"] for m, v in methods.items()}
            summary["ci95"][cell] = {m: stats(v)["ci95"] for m, v in methods.items()}
        payload["per_speaker"] = {
            f"fsdd_loso_k{k}": {s: {m: stats(runs[f"loso-{m}-{s}"]["test"][f"fsdd_loso_k{k}"])[
                "mean"] for m in ("hypernet", "protonet")} for s in speakers} for k in SHOTS}
        latency = bench.latency()
        payload["adapt_ms_fsdd_10w5s"] = latency
        summary["adapt_ms"] = {m: latency[m] for m in ("hypernet", "protonet")}
        payload["complete"] = True
    payload["summary"] = summary
    publish("speech", payload, runs, smoke=args.smoke)


if __name__ == "__main__":
    main()
