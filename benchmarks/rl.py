"""RL: policies generated from the environment's context vs the context concatenated to the
observation vs a context-blind policy (domain randomisation), at equal environment steps;
per-context experts as an upper bound; on MinAtar one generator for all games vs one
independent policy per game at the same total steps.

Every variant of a family uses the same PPO settings (configs/rl-*.yaml), the same network
(MLP 64-64 tanh, or MinAtar's CNN) and the same env steps, fixed here before any run:
cartpole 80k and pendulum 100k per (variant, seed), 5 seeds; the hypernet variant has more
trainable parameters (its generators), reported per variant, so an equal-size row
``concat_large`` (the concat MLP widened to 384-384, about the hypernet's parameter count)
runs last. Test contexts: 10 interpolation
(unseen values inside the training ranges) and 10 extrapolation (at least one parameter outside
them) contexts, fixed by the eval seed; mean return of 20 deterministic episodes per context;
interquartile mean (IQM) ± 95% bootstrap CI over (seed, context) pairs (rliable's
recommendation). Experts: the blind network trained on one fixed context (3 interpolation +
3 extrapolation contexts, seed 0) with the same steps, compared with every variant on those
contexts. MinAtar: games breakout and space_invaders, 150k steps per game (independent) = 300k
for the generator, 2 seeds; returns normalised as (R - random) / (independent - random), where
random is a uniform random policy's mean return over 100 episodes and independent the mean
over seeds of the independent policies (defined before the runs).

    python benchmarks/rl.py               # rerun until it prints "complete" (<= 9 min a call)
    python benchmarks/rl.py --smoke       # tiny budgets, rl-cpu-smoke.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ResumableBenchmark, environment, parse_args, publish  # noqa: E402

from hypermeta.rl.run import (  # noqa: E402
    RLConfig,
    evaluate_rl,
    fixed_contexts,
    load_rl_run,
    make_env,
    train_rl,
)

PHYSICS = {"cartpole": 80_000, "pendulum": 100_000}
VARIANTS = ("hypernet", "concat", "blind")
# concat_large: the concat MLP widened to 384-384, about the hypernet variant's trainable
# parameter count (an equal-size row; run after everything else)
VARIANT_CHANGES: dict[str, dict[str, Any]] = {
    **{v: {"policy.variant": v} for v in VARIANTS},
    "concat_large": {"policy.variant": "concat", "policy.hidden": [384, 384]}}
ROWS = (*VARIANTS, "concat_large")
GAMES = ("breakout", "space_invaders")
GAME_STEPS = 150_000
EXPERTS = 3  # per split


def _config(family: str, smoke: bool, **changes: Any) -> RLConfig:
    import yaml

    data = yaml.safe_load((ROOT / "configs" / f"rl-{family}.yaml").read_text())
    for key, value in changes.items():
        node = data
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    if smoke:
        data["total_steps"] = min(data["total_steps"], 2048)
        data["chunk_steps"] = 1024
        data["eval"] = {**data.get("eval", {}), "contexts": 2, "episodes": 2}
    return RLConfig.parse(data)


def _train(bench: ResumableBenchmark, key: str, config: RLConfig) -> Path | None:
    """Train one unit in chunks until complete (-> its folder) or past the deadline."""
    run_dir = bench.runs / key.replace("/", "-")
    while True:
        if time.time() > bench.deadline:
            return None
        result = train_rl(config, run_dir, max_steps=config.chunk_steps)
        if result.complete:
            return run_dir


def _test_sets(family: str, smoke: bool) -> dict[str, list[Any]]:
    """The family's fixed interpolation and extrapolation test contexts."""
    base = _config(family, smoke)
    return {which: fixed_contexts(base, which) for which in ("interp", "extrap")}


def _count(run_dir: Path) -> int:
    return sum(p.numel() for p in load_rl_run(run_dir).net.parameters())


def _variant_unit(bench: ResumableBenchmark, family: str, variant: str, seed: int,
                  sets: dict[str, list[Any]]) -> bool:
    """Train and test one (variant, seed) of a physics family; False when out of time."""
    key = f"{family}/{variant}/s{seed}"
    if key in bench.state:
        return True
    config = _config(family, bench.smoke, seed=seed, **VARIANT_CHANGES[variant])
    run_dir = _train(bench, key, config)
    if run_dir is None:
        return False
    run = load_rl_run(run_dir)
    bench.state[key] = {
        "family": family, "variant": variant, "seed": seed, "steps": run.steps,
        "parameters": _count(run_dir),
        **{which: evaluate_rl(run, sets[which], seed=seed) for which in sets}}
    bench.save()
    print(key, {w: round(float(np.mean(bench.state[key][w])), 1) for w in sets}, flush=True)
    return True


def equal_size_units(bench: ResumableBenchmark, seeds: list[int]) -> bool:
    """The concat variant widened to the hypernet's trainable parameter count."""
    for family in PHYSICS:
        sets = _test_sets(family, bench.smoke)
        for seed in seeds:
            if not _variant_unit(bench, family, "concat_large", seed, sets):
                return False
    return True


def physics_units(bench: ResumableBenchmark, seeds: list[int]) -> None:
    for family in PHYSICS:
        sets = _test_sets(family, bench.smoke)
        for seed in seeds:
            for variant in VARIANTS:
                if not _variant_unit(bench, family, variant, seed, sets):
                    return
        for which in ("interp", "extrap"):
            for index in range(min(EXPERTS, len(sets[which]))):
                key = f"{family}/expert/{which}{index}"
                if key in bench.state:
                    continue
                context = [float(v) for v in sets[which][index]]
                config = _config(family, bench.smoke, **{"policy.variant": "blind",
                                                         "env.context": context})
                run_dir = _train(bench, key, config)
                if run_dir is None:
                    return
                run = load_rl_run(run_dir)
                value = evaluate_rl(run, [context], seed=0)[0]
                bench.state[key] = {"family": family, "variant": "expert", "split": which,
                                    "index": index, "context": context, "return": value,
                                    "steps": run.steps}
                bench.save()
                print(key, round(value, 1), flush=True)


def random_return(game: str, episodes: int, seed: int = 0) -> float:
    config = _config("minatar", False, **{"env.games": list(GAMES)})
    rng = np.random.default_rng(seed)
    total = []
    for i in range(episodes):
        env = make_env(config, game=game)
        env.reset(seed=seed + i)
        done, ret = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = env.step(int(rng.integers(6)))
            ret += reward
            done = terminated or truncated
        total.append(ret)
    return float(np.mean(total))


def game_units(bench: ResumableBenchmark, seeds: list[int]) -> bool:
    if "minatar/random" not in bench.state:
        bench.state["minatar/random"] = {g: random_return(g, 10 if bench.smoke else 100)
                                         for g in GAMES}
        bench.save()
    for seed in seeds:
        units = [(f"minatar/hypernet/s{seed}", list(GAMES), len(GAMES) * GAME_STEPS)]
        units += [(f"minatar/independent-{g}/s{seed}", [g], GAME_STEPS) for g in GAMES]
        for key, games, steps in units:
            if key in bench.state:
                continue
            variant = "hypernet" if "hypernet" in key else "blind"
            config = _config("minatar", bench.smoke, **{
                "env.games": games, "policy.variant": variant, "seed": seed,
                "total_steps": min(steps, 4096) if bench.smoke else steps})
            run_dir = _train(bench, key, config)
            if run_dir is None:
                return False
            run = load_rl_run(run_dir)
            bench.state[key] = {"games": games, "seed": seed, "steps": run.steps,
                                "parameters": _count(run_dir),
                                "returns": dict(zip(games, evaluate_rl(
                                    run, games, seed=seed)))}
            bench.save()
            print(key, bench.state[key]["returns"], flush=True)
    return True


def iqm_ci(values: list[float], seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """Interquartile mean and its 95% percentile-bootstrap CI (rliable's recommendation)."""
    def trim_mean(x: np.ndarray, cut: float) -> float:  # scipy.stats.trim_mean's definition
        drop = int(cut * len(x))
        return float(np.sort(x)[drop: len(x) - drop].mean())

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    boots = [trim_mean(data[rng.integers(len(data), size=len(data))], 0.25)
             for _ in range(resamples)]
    return {"iqm": float(trim_mean(data, 0.25)), "ci95": [float(np.percentile(boots, 2.5)),
                                                          float(np.percentile(boots, 97.5))],
            "mean": float(data.mean()), "pairs": len(data)}


def summarise(state: dict[str, Any]) -> dict[str, Any]:
    """``return``: the headline numbers (IQM for cartpole/pendulum; normalised mean for
    MinAtar games); ``return_ci95``, ``return_mean``, ``pairs`` beside them; experts on their
    own contexts; env steps and trainable parameters per variant."""
    out: dict[str, Any] = {"return": {}, "return_ci95": {}, "return_mean": {}, "pairs": {},
                           "expert_contexts": {}, "env_steps": {}, "parameters": {}}
    for family in PHYSICS:
        units = [u for k, u in state.items() if k.startswith(f"{family}/")
                 and u.get("variant") in ROWS]
        for key in ("return", "return_ci95", "return_mean", "pairs"):
            out[key][family] = {}
        for which in ("interp", "extrap"):
            cells = {v: iqm_ci([r for u in units if u["variant"] == v for r in u[which]])
                     for v in ROWS if any(u["variant"] == v for u in units)}
            out["return"][family][which] = {v: c["iqm"] for v, c in cells.items()}
            out["return_ci95"][family][which] = {v: c["ci95"] for v, c in cells.items()}
            out["return_mean"][family][which] = {v: c["mean"] for v, c in cells.items()}
            out["pairs"][family][which] = {v: c["pairs"] for v, c in cells.items()}
        experts = [u for k, u in state.items() if k.startswith(f"{family}/expert/")]
        if experts:
            rows = {"expert": [e["return"] for e in experts]}
            for v in ROWS:  # the same contexts, every seed of the variant
                rows[v] = [u[e["split"]][e["index"]] for e in experts for u in units
                           if u["variant"] == v]
            out["expert_contexts"][family] = {
                "contexts": [e["context"] for e in experts],
                "mean_return": {k: float(np.mean(r)) for k, r in rows.items() if r}}
        out["env_steps"][family] = sorted({u["steps"] for u in units})
        out["parameters"][family] = {v: next((u["parameters"] for u in units
                                              if u["variant"] == v), None) for v in ROWS}
    rand = state.get("minatar/random")
    if rand:
        mat: dict[str, Any] = {}
        raw: dict[str, Any] = {"random": rand}
        for game in GAMES:
            ind = [u["returns"][game] for k, u in state.items()
                   if k.startswith(f"minatar/independent-{game}/")]
            hyp = [u["returns"][game] for k, u in state.items()
                   if k.startswith("minatar/hypernet/")]
            if not ind or not hyp:
                continue
            scale = float(np.mean(ind)) - rand[game]
            mat[game] = {"hypernet": (float(np.mean(hyp)) - rand[game]) / scale,
                         "independent": 1.0}
            raw[game] = {"hypernet": hyp, "independent": ind}
        out["return"]["minatar"] = mat
        out["minatar_raw_return"] = raw
        out["env_steps"]["minatar"] = {
            "hypernet_total": sorted({u["steps"] for k, u in state.items()
                                      if k.startswith("minatar/hypernet/")}),
            "independent_per_game": sorted({u["steps"] for k, u in state.items()
                                            if k.startswith("minatar/independent-")})}
        out["parameters"]["minatar"] = {
            "hypernet": next((u["parameters"] for k, u in state.items()
                              if k.startswith("minatar/hypernet/")), None),
            "independent_each": next((u["parameters"] for k, u in state.items()
                                      if k.startswith("minatar/independent-")), None)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds for cartpole/pendulum")
    parser.add_argument("--game-seeds", type=int, default=2, help="seeds for MinAtar")
    args = parse_args(parser)
    bench = ResumableBenchmark(args, "rl")
    seeds = list(range(1 if args.smoke else args.seeds))
    physics_units(bench, seeds)
    done = time.time() <= bench.deadline and game_units(
        bench, list(range(1 if args.smoke else args.game_seeds)))
    done = done and equal_size_units(bench, seeds)
    contexts = 2 if args.smoke else 10  # the configs' eval.contexts
    expected = len(PHYSICS) * (len(seeds) * len(ROWS) + 2 * min(EXPERTS, contexts))
    physics_done = sum(1 for k in bench.state if k.split("/")[0] in PHYSICS) >= expected
    payload = {"benchmark": "rl", **environment(seeds),
               "complete": bool(done and physics_done),
               "settings": {"physics_steps": PHYSICS, "games": GAMES,
                            "game_steps_per_game": GAME_STEPS, "experts_per_split": EXPERTS},
               "summary": summarise(bench.state)}
    publish("rl", payload, {}, smoke=args.smoke)


if __name__ == "__main__":
    main()
