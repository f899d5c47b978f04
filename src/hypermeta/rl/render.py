"""Rollout strips: one deterministic episode per context, drawn from the physics state with
matplotlib (classic control's own renderer needs pygame; this needs only the plot extra)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hypermeta.rl.run import RLRun, act, fixed_contexts, make_env


def _trajectory(run: RLRun, context: Any, steps: int, seed: int) -> tuple[list[Any], float]:
    env = make_env(run.config, context=context)
    obs, _ = env.reset(seed=seed)
    space = env.action_space
    discrete = hasattr(space, "n")
    states, total = [np.array(env.unwrapped.env.unwrapped.state)], 0.0
    for _ in range(steps):
        action = act(run.net, obs[None], discrete, None if discrete else space.low,
                     None if discrete else space.high)[0]
        obs, reward, terminated, truncated, _ = env.step(int(action) if discrete else action)
        total += reward
        states.append(np.array(env.unwrapped.env.unwrapped.state))
        if terminated or truncated:
            break
    env.close()
    return states, total


def rollout_strip(run: RLRun, out: str | Path, contexts: Sequence[str] | None = None, *,
                  frames: int = 6, steps: int | None = None, seed: int = 0) -> Path:
    """A PNG: one row per context, ``frames`` snapshots of one episode (cart and pole, or
    the pendulum), titled with the time and the return. Returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the strip needs matplotlib: pip install 'hypermeta[plot]'") from None
    family = run.config.env.family
    if family not in ("cartpole", "pendulum"):
        raise ValueError(f"strips are drawn for cartpole and pendulum runs, not {family}")
    space = run.config.task_space
    parsed = [space.check(c.split(",")).tolist() for c in contexts] if contexts else [
        list(space.default), *(list(c) for c in fixed_contexts(run.config, "interp", 1)),
        *(list(c) for c in fixed_contexts(run.config, "extrap", 1))]
    steps = steps or (500 if family == "cartpole" else 200)  # the families' episode lengths
    tall = 1.0 if family == "cartpole" else 1.7
    fig, axes = plt.subplots(len(parsed), frames,
                             figsize=(1.7 * frames + 1.2, tall * len(parsed) + 0.5),
                             squeeze=False)
    for row, context in enumerate(parsed):
        states, total = _trajectory(run, context, steps, seed)
        picks = np.linspace(0, len(states) - 1, frames).round().astype(int)
        label = "\n".join(f"{n} = {v:.3g}" for n, v in zip(space.names, context))
        axes[row, 0].set_ylabel(f"{label}\nreturn {total:.0f}", fontsize=7, rotation=0,
                                ha="right", va="center")
        for col, index in enumerate(picks):
            ax = axes[row, col]
            _draw(ax, family, states[index], context)
            ax.set_title(f"t = {index * (0.02 if family == 'cartpole' else 0.05):.1f} s",
                         fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{family} · {run.config.policy.variant} policy · {run.steps} env steps",
                 fontsize=9)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def _draw(ax: Any, family: str, state: np.ndarray, context: Sequence[float]) -> None:
    if family == "cartpole":
        x, theta, length = float(state[0]), float(state[2]), 2 * context[0]  # full pole
        ax.plot([-2.4, 2.4], [0, 0], color="0.6", lw=1)
        ax.add_patch(_rect(x - 0.25, -0.12, 0.5, 0.24))
        ax.plot([x, x + length * math.sin(theta)], [0, length * math.cos(theta)],
                color="tab:orange", lw=3)
        ax.set_xlim(-2.6, 2.6)
        ax.set_ylim(-0.3, max(1.1, length + 0.1))
    else:
        theta, length = float(state[0]), context[1]
        ax.plot([0, length * math.sin(theta)], [0, length * math.cos(theta)],
                color="tab:red", lw=3)
        ax.plot([0], [0], "ko", ms=3)
        reach = max(1.6, length + 0.2)
        ax.set_xlim(-reach, reach)
        ax.set_ylim(-reach, reach)
    ax.set_aspect("equal")


def _rect(x: float, y: float, w: float, h: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, color="tab:blue")

