"""RL runs: a YAML config -> PPO (stable-baselines3) on a contextual family with a generated,
concatenated or context-blind policy; hypermeta safetensors checkpoints (SB3's zip format
unpickles and is never used); batched evaluation on fixed test contexts; one context's policy
as a plain ``nn.Module`` (safetensors or ONNX).

Run folder: ``config.json``, ``checkpoint.safetensors`` (policy, optimizer, steps),
``metrics.jsonl`` (one line per chunk: steps, episode return mean), ``eval-*.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError
from torch import nn

from hypermeta.checkpoint import (
    CheckpointError,
    atomic_write_json,
    load_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)
from hypermeta.config import ConfigError, apply_overrides
from hypermeta.rl import require
from hypermeta.rl.policy import PolicyNet

log = logging.getLogger(__name__)
Family = Literal["cartpole", "pendulum", "minatar", "atari"]
CHECKPOINT = "checkpoint.safetensors"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvConfig(_Strict):
    """``family``; for physics families optional training ranges and a fixed context (a
    per-context expert); for game families the games (the tasks) and, for MinAtar, an
    optional within-game speed range (``speed: [lo, hi]``: move and spawn intervals divided
    by a speed drawn per episode; part of the context)."""

    family: Family
    games: list[str] = []
    speed: tuple[float, float] | None = None
    train: dict[str, tuple[float, float]] = {}
    context: list[float] | None = None
    max_steps: PositiveInt = 5000

    @property
    def games_family(self) -> bool:
        """Whether the tasks are games (``minatar``, ``atari``) rather than physics."""
        return self.family in ("minatar", "atari")


class PolicyConfig(_Strict):
    variant: Literal["hypernet", "concat", "blind"] = "hypernet"
    hidden: list[PositiveInt] = [64, 64]
    activation: Literal["tanh", "relu"] = "tanh"
    z_dim: PositiveInt = 32
    hyper_hidden: list[PositiveInt] = [32]


class PPOConfig(_Strict):
    """stable-baselines3 PPO's hyperparameters (same names)."""

    n_envs: PositiveInt = 8
    n_steps: PositiveInt = 256
    batch_size: PositiveInt = 256
    n_epochs: PositiveInt = 10
    learning_rate: float = Field(3e-4, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_range: float = Field(0.2, gt=0)
    ent_coef: float = Field(0.0, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    log_std_init: float = 0.0


class RLEvalConfig(_Strict):
    contexts: PositiveInt = 10
    episodes: PositiveInt = 20
    seed: int = 1234


class RLConfig(_Strict):
    """One RL run. ``total_steps`` environment steps in chunks of ``chunk_steps`` (a
    checkpoint after each); ``threads`` torch threads."""

    version: Literal[1] = 1
    env: EnvConfig
    policy: PolicyConfig = PolicyConfig()
    ppo: PPOConfig = PPOConfig()
    total_steps: PositiveInt = 100_000
    chunk_steps: PositiveInt = 25_000
    seed: int = 0
    threads: PositiveInt | None = 1
    eval: RLEvalConfig = RLEvalConfig()

    @classmethod
    def from_file(cls, path: str | Path, overrides: Sequence[str] = ()) -> RLConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping")
        return cls.parse(apply_overrides(data, list(overrides)))

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RLConfig:
        try:
            config = cls.model_validate(data)
        except ValidationError as err:
            from hypermeta.config import format_errors

            raise ConfigError(format_errors(err)) from None
        try:
            _ = config.task_space  # games and contexts checked before any work
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"invalid config: {err}") from None
        return config

    @functools.cached_property
    def task_space(self) -> Any:
        """The family's ``ContextSpace`` (physics) or ``GameSet`` (games), checked; built once
        per config (every environment of a run reads it)."""
        from hypermeta.rl import envs

        env = self.env
        if env.games_family:
            if env.train or env.context is not None:
                raise ConfigError(f"env.train and env.context apply to physics families; "
                                  f"{env.family} takes env.games")
            return envs.game_set(env.family, env.games, env.speed)
        if env.games or env.speed is not None:
            raise ConfigError(f"env.games and env.speed apply to minatar/atari, not "
                              f"{env.family}")
        space = envs.context_space(env.family).with_train(
            {k: list(v) for k, v in env.train.items()})
        if env.context is not None:
            space.check(env.context)
        return space


def is_rl_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds an RL run (its config.json has an ``env`` section)."""
    path = Path(run_dir) / "config.json"
    try:
        return path.is_file() and "env" in json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False


# ---------------------------------------------------------------------------- environments
def split_game(value: str) -> tuple[str, float | None]:
    """``"asterix"`` -> (``"asterix"``, None); ``"asterix:1.5"`` -> (``"asterix"``, 1.5)."""
    game, sep, speed = str(value).partition(":")
    if not sep:
        return game, None
    try:
        return game, float(speed)
    except ValueError:
        raise ValueError(f"a game context is GAME or GAME:SPEED; got {value!r}") from None


def make_env(config: RLConfig, *, context: Any = None, game: str | None = None) -> Any:
    """One environment of the run's family: training contexts drawn per reset, or the given
    raw ``context`` / ``game`` (``"name"`` or ``"name:speed"``) fixed."""
    from hypermeta.rl.envs import ContextualEnv, GameEnv

    space = config.task_space
    if config.env.games_family:
        if context is not None:
            raise ValueError("game families take game=, not context=")
        name, speed = (None, None) if game is None else split_game(game)
        return GameEnv(space, game=name, speed=speed, max_steps=config.env.max_steps)
    if game is not None:
        raise ValueError(f"{config.env.family} takes context=, not game=")
    fixed = context if context is not None else config.env.context
    return ContextualEnv(config.env.family, space, context=fixed)


def build_policy_net(config: RLConfig) -> PolicyNet:
    """The run's ``PolicyNet`` (fresh initialisation, seeded by ``config.seed``)."""
    env = make_env(config)
    try:
        space = config.task_space
        action = env.action_space
        action_dim = int(action.n) if hasattr(action, "n") else int(np.prod(action.shape))
        games = config.env.games_family
        context_dim = space.context_dim if games else space.dim
        obs_dim = int(env.observation_space.shape[0]) - context_dim
        p = config.policy
        torch.manual_seed(config.seed)
        return PolicyNet(p.variant, obs_dim, context_dim, action_dim, hidden=p.hidden,
                         activation=p.activation, z_dim=p.z_dim, hyper_hidden=p.hyper_hidden,
                         channels=space.channels if games else None)
    finally:
        env.close()


def _sb3_policy_class() -> Any:
    require()
    from stable_baselines3.common.policies import ActorCriticPolicy

    class HyperActorCriticPolicy(ActorCriticPolicy):
        """SB3's actor-critic with the whole network a ``PolicyNet``: its mlp_extractor emits
        the action output and the value, so SB3's action and value nets are identities."""

        def __init__(self, *args: Any, net: PolicyNet, **kwargs: Any) -> None:
            self._net = [net]  # a list: not registered before nn.Module.__init__ runs
            kwargs["ortho_init"] = False  # PolicyNet initialises itself (see its docstring)
            super().__init__(*args, **kwargs)

        def _build_mlp_extractor(self) -> None:
            self.mlp_extractor = self._net[0]  # type: ignore[assignment]

        def _build(self, lr_schedule: Callable[[float], float]) -> None:
            super()._build(lr_schedule)
            self.action_net = nn.Identity()
            self.value_net = nn.Identity()  # type: ignore[assignment]
            self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
                self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    return HyperActorCriticPolicy


def _vec_env(config: RLConfig, seed: int) -> Any:
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    vec = DummyVecEnv([lambda: Monitor(make_env(config))] * config.ppo.n_envs)
    vec.seed(seed)
    return vec


# -------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class RLResult:
    run_dir: Path
    steps_done: int
    complete: bool
    episode_return: float | None


def train_rl(config: RLConfig, run_dir: str | Path, *, max_steps: int | None = None,
             progress: bool = False) -> RLResult:
    """Train (or resume) the run in ``run_dir`` towards ``config.total_steps`` env steps.

    Arguments:
        max_steps: stop after about this many environment steps in this call (rounded up to
            whole PPO rollouts); rerun to resume from the checkpoint.
        progress: SB3's progress bar.

    A resume restores the policy, the optimizer, the step count and the torch RNG; the
    environments restart their episodes (a resumed run continues, it does not replay).
    """
    require()
    from stable_baselines3 import PPO

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_json = config.model_dump_json()
    ckpt = run_dir / CHECKPOINT
    if (run_dir / "config.json").is_file():
        # parsed, so a field added since (with its default) does not make a run another one
        saved = RLConfig.parse(json.loads((run_dir / "config.json").read_text()))
        if saved != config:
            raise ConfigError(f"{run_dir} holds a run with another config; use a new folder")
    atomic_write_json(run_dir / "config.json", json.loads(config_json))
    before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        net = build_policy_net(config)
        steps, state, extra = 0, None, dict[str, torch.Tensor]()
        if ckpt.is_file():
            weights, extra, meta = load_checkpoint(ckpt)
            state = meta["state"]
            steps = int(state["steps"])
        p = config.ppo
        vec = _vec_env(config, config.seed + steps)
        kwargs = p.model_dump(exclude={"n_envs", "log_std_init"})
        model = PPO(_sb3_policy_class(), vec, seed=config.seed + steps, device="cpu",
                    policy_kwargs={"net": net, "log_std_init": p.log_std_init}, **kwargs)
        if state is not None:
            model.policy.load_state_dict(weights)
            restore_optimizer(model.policy.optimizer, extra, state["optimizer"])
            torch.set_rng_state(extra["rng/torch"])
            model.num_timesteps, model._n_updates = steps, int(state["updates"])
        goal = config.total_steps if max_steps is None else min(config.total_steps,
                                                                steps + max_steps)
        last_return = state.get("episode_return") if state else None
        while model.num_timesteps < goal:
            chunk = min(config.chunk_steps, goal - model.num_timesteps)
            start = time.perf_counter()
            model.learn(chunk, reset_num_timesteps=False, progress_bar=progress)
            returns = [e["r"] for e in model.ep_info_buffer or []]
            last_return = float(np.mean(returns)) if returns else None
            tensors, optim_state = optimizer_tensors(model.policy.optimizer)
            tensors["rng/torch"] = torch.get_rng_state()
            save_checkpoint(ckpt, config_json=config_json, model=model.policy.state_dict(),
                            extra_tensors=tensors,
                            state={"steps": model.num_timesteps, "updates": model._n_updates,
                                   "optimizer": optim_state, "episode_return": last_return})
            with (run_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps({"steps": model.num_timesteps,
                                         "episode_return": last_return,
                                         "seconds": round(time.perf_counter() - start, 2)})
                             + "\n")
        vec.close()
        return RLResult(run_dir, int(model.num_timesteps),
                        model.num_timesteps >= config.total_steps, last_return)
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------- loading
@dataclass
class RLRun:
    """A trained RL run: its config, its policy network (eval mode) and content id."""

    config: RLConfig
    net: PolicyNet
    content_id: str
    steps: int

    def normalised_context(self, value: Any) -> torch.Tensor:
        """A raw context (numbers, or a game name) -> what the policy reads, checked."""
        space = self.config.task_space
        if self.config.env.games_family:
            if not isinstance(value, str):
                raise ValueError(f"the context of a {self.config.env.family} run is a game "
                                 f"name (GAME or GAME:SPEED), one of {list(space.games)}; got "
                                 f"{value!r}")
            return torch.from_numpy(space.context(*split_game(value)))
        if isinstance(value, str):
            try:
                value = [float(v) for v in value.split(",")]
            except ValueError:
                raise ValueError(f"context must be {space.dim} comma-separated numbers "
                                 f"({', '.join(space.names)}); got {value!r}") from None
        return torch.from_numpy(space.normalise(space.check(value)))

    def policy(self, context: Any) -> nn.Module:
        """One context's standalone policy (flat observation without context -> action
        output: logits, or the mean torque)."""
        return self.net.policy_for(self.normalised_context(context))


def load_rl_run(run_dir: str | Path) -> RLRun:
    """Rebuild a trained run's policy from its checkpoint (never unpickles)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    if not is_rl_run(run_dir):
        raise ValueError(f"{run_dir} is not an RL run (its config has no env section)")
    weights, _, meta = load_checkpoint(run_dir / CHECKPOINT)
    config = RLConfig.parse(meta["config"])
    net = build_policy_net(config)
    prefix = "mlp_extractor."
    own = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(own)
    except RuntimeError as err:
        raise CheckpointError(f"{run_dir / CHECKPOINT} does not fit its config: {err}") from None
    return RLRun(config, net.eval(), meta["content_id"], int(meta["state"]["steps"]))


# ------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def act(net: PolicyNet, obs: np.ndarray, discrete: bool, low: Any = None,
        high: Any = None) -> np.ndarray:
    """Deterministic actions of a batch of flat observations: argmax, or the clipped mean."""
    out = net.forward_actor(torch.as_tensor(obs, dtype=torch.float32))
    actions: np.ndarray = out.argmax(1).numpy() if discrete else np.clip(out.numpy(), low, high)
    return actions


def rollout_returns(net: PolicyNet, envs: Sequence[Any], seed: int) -> np.ndarray:
    """Undiscounted return of one episode in each env, all stepped as one batch."""
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    space = envs[0].action_space
    discrete = hasattr(space, "n")
    low, high = (None, None) if discrete else (space.low, space.high)
    returns = np.zeros(len(envs))
    alive = np.ones(len(envs), dtype=bool)
    while alive.any():
        index = np.flatnonzero(alive)
        actions = act(net, obs[index], discrete, low, high)
        for i, action in zip(index, actions):
            step = envs[int(i)].step(action if not discrete else int(action))
            obs[i], reward, terminated, truncated = step[0], step[1], step[2], step[3]
            returns[i] += reward
            if terminated or truncated:
                alive[i] = False
    for env in envs:
        env.close()
    return returns


def fixed_contexts(config: RLConfig, which: str, count: int | None = None,
                  seed: int | None = None) -> list[Any]:
    """The fixed test contexts: ``interp``/``extrap`` raw context vectors (physics), or the
    run's games (``which`` = ``games``)."""
    if config.env.games_family:
        if which != "games":
            raise ValueError(f"{config.env.family} runs are tested on their games "
                             "(which='games')")
        if config.env.speed is None:
            return list(config.env.games)
        lo, hi = config.env.speed  # each game at the ends and the middle of its speed range
        return [f"{g}:{s:g}" for g in config.env.games for s in (lo, (lo + hi) / 2, hi)]
    base = config.eval.seed if seed is None else seed
    # interp and extrap draw from separate streams, both fixed by the seed
    rng = np.random.default_rng([base, 1] if which == "interp" else base)
    return list(config.task_space.sample(rng, count or config.eval.contexts, which))


def evaluate_rl(run: RLRun, contexts: Sequence[Any], *, episodes: int | None = None,
                seed: int = 0) -> list[float]:
    """Mean return over ``episodes`` deterministic episodes per context (raw contexts, or game
    names), for every context."""
    config = run.config
    count = episodes or config.eval.episodes
    games = config.env.games_family
    envs = [make_env(config, **({"game": c} if games else {"context": c}))
            for c in contexts for _ in range(count)]
    returns = rollout_returns(run.net, envs, seed)
    return [float(r) for r in returns.reshape(len(contexts), count).mean(1)]


def export_policy(run: RLRun, context: Any, out: str | Path, fmt: str = "safetensors") -> Path:
    """Write one context's policy as a plain network: ``safetensors`` (+ JSON), ``pt2`` or
    ``onnx`` (input: flat observations ``[N, obs_dim]`` without the context; output: logits
    or the mean action, before clipping)."""
    from hypermeta.export import FORMATS, export_network

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    network = run.policy(context)
    example = torch.zeros(2, run.net.obs_dim)
    return export_network(network, out, fmt, example=example,
                          architecture=getattr(network, "config", None),
                          content_id=run.content_id)
