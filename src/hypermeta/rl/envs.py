"""Contextual environments: the physics (or the game) is the task, its parameters the descriptor.

Every environment here is a ``gymnasium.Env`` whose observation is one flat float32 vector
``[*observation.flatten(), *normalised_context]``: the policy splits it (``obs_dim`` first, the
context last), so stable-baselines3's rollouts, buffers and vectorised environments need
nothing custom. A context is normalised to ``[-1, 1]`` over the *training* range, so values
outside it (extrapolation) read as ``|c| > 1``.

Families:
- ``cartpole``: pole half-length, pole mass, force magnitude (every derived constant of
  ``CartPoleEnv`` recomputed: ``total_mass``, ``polemass_length``).
- ``pendulum``: mass, length, gravity (continuous torque).
- ``minatar``: MinAtar games (GPL-3.0, an optional install: ``pip install --no-deps minatar``);
  the context is a one-hot game id; observations are the 10x10 channel maps, padded to the
  widest game's channel count.
- ``atari``: ALE games through ``ale-py`` (RGB frames mean-pooled to 10x10x3), to show a real
  Atari environment runs through the same wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hypermeta.rl import require

require()
import gymnasium as gym  # noqa: E402
from gymnasium import spaces  # noqa: E402

Range = tuple[float, float]


@dataclass(frozen=True)
class ContextSpace:
    """The declared parameters of a contextual family.

    Attributes:
        names: parameter names, in the context vector's order.
        default: the unmodified environment's values.
        bounds: physically allowed values (a context outside them is refused).
        train: the training range of each parameter (uniform sampling; the normalisation).
        extrap_margin: extrapolation contexts lie within ``margin x width`` outside ``train``.
    """

    names: tuple[str, ...]
    default: tuple[float, ...]
    bounds: tuple[Range, ...]
    train: tuple[Range, ...]
    extrap_margin: float = 0.6

    def __post_init__(self) -> None:
        for name, (lo, hi), (tlo, thi) in zip(self.names, self.bounds, self.train):
            if not (lo <= tlo < thi <= hi):
                raise ValueError(f"context {name!r}: training range [{tlo}, {thi}] must lie "
                                 f"inside its bounds [{lo}, {hi}] and be non-empty")

    @property
    def dim(self) -> int:
        return len(self.names)

    def with_train(self, train: dict[str, Sequence[float]]) -> ContextSpace:
        """A copy whose training ranges are replaced by ``{name: [lo, hi]}``."""
        unknown = sorted(set(train) - set(self.names))
        if unknown:
            raise ValueError(f"unknown context parameter(s) {unknown}; this family has "
                             f"{list(self.names)}")
        ranges = tuple((float(train[n][0]), float(train[n][1])) if n in train else r
                       for n, r in zip(self.names, self.train))
        return ContextSpace(self.names, self.default, self.bounds, ranges, self.extrap_margin)

    def check(self, values: Any) -> np.ndarray:
        """``values`` as a float64 vector, or a clear error (shape, NaN/Inf, out of bounds)."""
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"context must be {self.dim} numbers {list(self.names)}; got "
                             f"{values!r}") from None
        if array.shape != (self.dim,):
            raise ValueError(f"context must have shape [{self.dim}] ({', '.join(self.names)})"
                             f"; got shape {list(array.shape)}")
        if not np.isfinite(array).all():
            raise ValueError(f"context contains NaN or Inf: {array.tolist()}")
        for name, value, (lo, hi) in zip(self.names, array, self.bounds):
            if not lo <= value <= hi:
                raise ValueError(f"context {name}={value:g} is outside its declared bounds "
                                 f"[{lo:g}, {hi:g}]")
        return array

    def normalise(self, values: np.ndarray) -> np.ndarray:
        """Map the training range of each parameter to ``[-1, 1]`` (float32)."""
        lo, hi = np.array(self.train).T
        out: np.ndarray = ((values - (lo + hi) / 2) / ((hi - lo) / 2)).astype(np.float32)
        return out

    def sample(self, rng: np.random.Generator, count: int, which: str = "train") -> np.ndarray:
        """``count`` contexts ``[count, dim]``: ``train``/``interp`` uniform inside the
        training ranges; ``extrap`` inside the widened ranges with at least one parameter
        outside its training range (each side chosen at random, clipped to the bounds)."""
        lo, hi = np.array(self.train).T
        if which in ("train", "interp"):
            return rng.uniform(lo, hi, size=(count, self.dim))
        if which != "extrap":
            raise ValueError(f"which must be 'train', 'interp' or 'extrap', got {which!r}")
        blo, bhi = np.array(self.bounds).T
        width = (hi - lo) * self.extrap_margin
        out = np.empty((count, self.dim))
        for i in range(count):
            row = rng.uniform(np.maximum(lo - width, blo), np.minimum(hi + width, bhi))
            pushed = rng.integers(self.dim)  # one parameter surely outside its range
            below = lo[pushed] - max(lo[pushed] - width[pushed], blo[pushed])
            above = min(hi[pushed] + width[pushed], bhi[pushed]) - hi[pushed]
            if rng.random() < below / (below + above):
                row[pushed] = rng.uniform(lo[pushed] - below, lo[pushed])
            else:
                row[pushed] = rng.uniform(hi[pushed], hi[pushed] + above)
            out[i] = row
        return out


CARTPOLE = ContextSpace(
    names=("length", "masspole", "force_mag"), default=(0.5, 0.1, 10.0),
    bounds=((0.05, 5.0), (0.01, 5.0), (1.0, 100.0)),
    train=((0.25, 0.75), (0.05, 0.25), (7.5, 12.5)))
PENDULUM = ContextSpace(
    names=("m", "l", "g"), default=(1.0, 1.0, 10.0),
    bounds=((0.05, 10.0), (0.05, 10.0), (0.5, 50.0)),
    train=((0.6, 1.4), (0.6, 1.4), (8.0, 12.0)))
MINATAR_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")


def apply_cartpole(env: Any, length: float, masspole: float, force_mag: float) -> None:
    """Set CartPole's physics and recompute every derived constant (the step reads
    ``total_mass`` and ``polemass_length``, not ``masspole``/``length`` alone)."""
    base = env.unwrapped
    base.length, base.masspole, base.force_mag = length, masspole, force_mag
    base.total_mass = base.masspole + base.masscart
    base.polemass_length = base.masspole * base.length


def apply_pendulum(env: Any, m: float, l: float, g: float) -> None:  # noqa: E741
    """Set Pendulum's mass, length and gravity (its step reads ``self.m``, ``self.l``,
    ``self.g`` every time)."""
    base = env.unwrapped
    base.m, base.l, base.g = m, l, g


@dataclass
class _Physics:
    make: Any
    space: ContextSpace
    apply: Any


class ContextualEnv(gym.Env):
    """A classic-control environment whose physics is set from a context at every reset.

    Arguments:
        family: ``"cartpole"`` or ``"pendulum"``.
        space: the family's ``ContextSpace`` (possibly with other training ranges).
        context: a fixed context (raw values); ``None`` draws one from the training range
            at every reset with the environment's own generator.
        contexts: alternatively a list of raw contexts, one drawn per reset.

    ``info["context"]`` carries the raw context of the running episode.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}

    def __init__(self, family: str, space: ContextSpace, *, context: Any = None,
                 contexts: Sequence[Any] | None = None, render_mode: str | None = None) -> None:
        physics = _PHYSICS.get(family)
        if physics is None:
            raise ValueError(f"unknown contextual family {family!r}; one of {sorted(_PHYSICS)}")
        self.family, self.space = family, space
        self.env = physics.make(render_mode=render_mode)
        self._apply = physics.apply
        self.fixed = None if context is None else space.check(context)
        self.choices = None if contexts is None else [space.check(c) for c in contexts]
        if self.choices is not None and not self.choices:
            raise ValueError("contexts is empty")
        inner = self.env.observation_space
        self.obs_dim = int(np.prod(inner.shape))
        low = np.concatenate([np.full(self.obs_dim, -np.inf), np.full(space.dim, -np.inf)])
        self.observation_space = spaces.Box(low.astype(np.float32), -low.astype(np.float32),
                                            dtype=np.float32)
        self.action_space = self.env.action_space
        self.render_mode = render_mode
        self.context = np.array(space.default if self.fixed is None else self.fixed)
        self._tail = space.normalise(self.context)

    def set_context(self, context: Any) -> None:
        """Apply a raw context now (it holds until the next reset draws another)."""
        self.context = self.space.check(context)
        self._apply(self.env, *self.context.tolist())
        self._tail = self.space.normalise(self.context)

    def _observe(self, obs: Any) -> np.ndarray:
        flat = np.asarray(obs, dtype=np.float32).reshape(-1)
        return np.concatenate([flat, self._tail])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if self.fixed is not None:
            context = self.fixed
        elif self.choices is not None:
            context = self.choices[int(self.np_random.integers(len(self.choices)))]
        else:
            lo, hi = np.array(self.space.train).T
            context = self.np_random.uniform(lo, hi)
        self.set_context(context)
        obs, info = self.env.reset(seed=None if seed is None else int(
            self.np_random.integers(2**31)))
        return self._observe(obs), {**info, "context": self.context.copy()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(obs), float(reward), terminated, truncated, {
            **info, "context": self.context.copy()}

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


def _cartpole(render_mode: str | None = None) -> Any:
    return gym.make("CartPole-v1", render_mode=render_mode)


def _pendulum(render_mode: str | None = None) -> Any:
    return gym.make("Pendulum-v1", render_mode=render_mode)


_PHYSICS = {"cartpole": _Physics(_cartpole, CARTPOLE, apply_cartpole),
            "pendulum": _Physics(_pendulum, PENDULUM, apply_pendulum)}


def context_space(family: str) -> ContextSpace:
    """The declared ``ContextSpace`` of a physics family (``cartpole``, ``pendulum``)."""
    if family not in _PHYSICS:
        raise ValueError(f"{family!r} has no physical context; one of {sorted(_PHYSICS)}")
    return _PHYSICS[family].space


# ----------------------------------------------------------------------------------- games
def _require_minatar() -> Any:
    try:
        import logging

        logging.getLogger().disabled, was = True, logging.getLogger().disabled
        try:  # MinAtar logs a warning at import when seaborn (rendering only) is missing
            import minatar
        finally:
            logging.getLogger().disabled = was
    except ImportError:
        raise ImportError("the minatar family needs MinAtar (GPL-3.0, never bundled): "
                          "pip install --no-deps minatar") from None
    return minatar


# Within a MinAtar game, ``speed`` divides the game's move and spawn intervals (the instance
# attributes its reset sets; its difficulty ramp then shortens them further as usual).
SPEED_ATTRIBUTES = {
    "asterix": ("move_speed", "move_timer", "spawn_speed", "spawn_timer"),
    "seaquest": ("move_speed", "e_spawn_speed", "e_spawn_timer"),
    "space_invaders": ("enemy_move_interval", "alien_move_timer"),
}
SPEED_BOUNDS = (0.25, 4.0)


@dataclass
class GameSet:
    """The games of a multi-game family: names (the task ids), the observation layout and,
    optionally, a within-game speed range (its context value normalised to [-1, 1])."""

    family: str
    games: tuple[str, ...]
    channels: int = field(default=0)
    speed: tuple[float, float] | None = None

    @property
    def context_dim(self) -> int:
        return len(self.games) + (self.speed is not None)

    def index(self, game: str) -> int:
        if game not in self.games:
            raise ValueError(f"unknown game {game!r}; this run's games are {list(self.games)}")
        return self.games.index(game)

    def check_speed(self, speed: float) -> float:
        lo, hi = SPEED_BOUNDS
        if not (isinstance(speed, (int, float)) and np.isfinite(speed) and lo <= speed <= hi):
            raise ValueError(f"speed {speed!r} is outside its declared bounds [{lo}, {hi}]")
        return float(speed)

    def context(self, game: str, speed: float | None = None) -> np.ndarray:
        """The normalised context: the one-hot game id (and the speed over its range)."""
        out = np.zeros(self.context_dim, dtype=np.float32)
        out[self.index(game)] = 1.0
        if self.speed is not None:
            lo, hi = self.speed
            value = self.check_speed((lo + hi) / 2 if speed is None else speed)
            out[-1] = (value - (lo + hi) / 2) / ((hi - lo) / 2)
        elif speed is not None:
            raise ValueError("this run has no speed context (env.speed is not set)")
        return out


def game_set(family: str, games: Sequence[str],
             speed: Sequence[float] | None = None) -> GameSet:
    """Check the game names (and speed range) of a ``minatar`` or ``atari`` family and size
    its observations."""
    if not games:
        raise ValueError(f"the {family} family needs env.games (a list of game names)")
    if len(set(games)) != len(games):
        raise ValueError(f"env.games has duplicates: {list(games)}")
    if family == "minatar":
        unknown = [g for g in games if g not in MINATAR_GAMES]
        if unknown:
            raise ValueError(f"unknown MinAtar game(s) {unknown}; one of {list(MINATAR_GAMES)}")
        span = None
        if speed is not None:
            fixed = [g for g in games if g not in SPEED_ATTRIBUTES]
            if fixed:
                raise ValueError(f"{fixed} have no speed parameter; env.speed applies to "
                                 f"{sorted(SPEED_ATTRIBUTES)}")
            lo, hi = (float(v) for v in speed)
            if not SPEED_BOUNDS[0] <= lo < hi <= SPEED_BOUNDS[1]:
                raise ValueError(f"env.speed [{lo}, {hi}] must be a non-empty range inside "
                                 f"{list(SPEED_BOUNDS)}")
            span = (lo, hi)
        minatar = _require_minatar()
        channels = max(minatar.Environment(g).state_shape()[2] for g in games)
        return GameSet(family, tuple(games), channels, span)
    if family == "atari":
        if speed is not None:
            raise ValueError("env.speed applies to MinAtar games, not atari")
        return GameSet(family, tuple(games), 3)
    raise ValueError(f"{family!r} is not a game family (minatar, atari)")


def apply_speed(env: Any, game: str, speed: float) -> None:
    """Divide a MinAtar game's move and spawn intervals by ``speed`` (at least 1 frame)."""
    inner = env.env
    for name in SPEED_ATTRIBUTES[game]:
        setattr(inner, name, max(1, round(getattr(inner, name) / speed)))


class GameEnv(gym.Env):
    """Several games behind one observation/action space; the game is the task.

    The observation is the game's ``[C, 10, 10]`` frame (MinAtar's channel maps, zero-padded to
    ``games.channels``; Atari RGB mean-pooled 21x16 to 10x10) flattened, then the one-hot
    game id (and, with ``games.speed``, the normalised speed). All games share MinAtar's 6
    actions (ALE: the action set of the first game).

    Arguments:
        games: a ``GameSet``.
        game: play this game at every reset; ``None`` draws one per reset.
        speed: a fixed within-game speed; ``None`` draws one per reset from ``games.speed``
            (when the set has a speed range).
        max_steps: truncate an episode after this many steps.
    """

    def __init__(self, games: GameSet, *, game: str | None = None, speed: float | None = None,
                 max_steps: int = 5000, sticky_action_prob: float = 0.1) -> None:
        self.games, self.max_steps = games, max_steps
        self.fixed = None if game is None else games.games[games.index(game)]
        self.game = self.fixed or games.games[0]
        if speed is not None:
            games.context(self.game, speed)  # checks the speed (and that the run has one)
        self.fixed_speed = speed
        self.speed = speed if speed is not None else (
            None if games.speed is None else sum(games.speed) / 2)
        self._tail = games.context(self.game, self.speed)
        self.obs_shape = (games.channels, 10, 10)
        size = int(np.prod(self.obs_shape)) + games.context_dim
        self.observation_space = spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self._steps = 0
        if games.family == "minatar":
            minatar = _require_minatar()
            self._envs = {g: minatar.Environment(g, sticky_action_prob=sticky_action_prob)
                          for g in games.games}
            self.action_space = spaces.Discrete(6)
        else:
            import ale_py

            gym.register_envs(ale_py)
            self._envs = {g: gym.make(g, repeat_action_probability=sticky_action_prob,
                                      frameskip=4) for g in games.games}
            first = self._envs[games.games[0]]
            self.action_space = spaces.Discrete(int(first.action_space.n))

    def _frame(self, raw: Any) -> np.ndarray:
        if self.games.family == "minatar":
            state = np.asarray(raw, dtype=np.float32).transpose(2, 0, 1)  # (C, 10, 10)
            frame = np.zeros(self.obs_shape, dtype=np.float32)
            frame[: state.shape[0]] = state
        else:  # (210, 160, 3) uint8 -> (3, 10, 10) in [0, 1]
            pooled = np.asarray(raw, dtype=np.float32).reshape(10, 21, 10, 16, 3).mean((1, 3))
            frame = pooled.transpose(2, 0, 1) / 255.0
        return np.concatenate([frame.reshape(-1), self._tail])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.game = self.fixed or self.games.games[int(self.np_random.integers(
            len(self.games.games)))]
        if self.games.speed is not None and self.fixed_speed is None:
            self.speed = float(self.np_random.uniform(*self.games.speed))
        self._tail = self.games.context(self.game, self.speed)
        env, self._steps = self._envs[self.game], 0
        if self.games.family == "minatar":
            env.seed(int(self.np_random.integers(2**31)))
            env.reset()
            if self.speed is not None:
                apply_speed(env, self.game, self.speed)
            raw = env.state()
        else:
            raw, _ = env.reset(seed=int(self.np_random.integers(2**31)))
        return self._frame(raw), {"game": self.game, "speed": self.speed}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        env = self._envs[self.game]
        self._steps += 1
        if self.games.family == "minatar":
            reward, terminated = env.act(int(action))
            raw = env.state()
        else:
            raw, reward, terminated, _, _ = env.step(int(action))
        truncated = self._steps >= self.max_steps and not terminated
        return self._frame(raw), float(reward), bool(terminated), truncated, {
            "game": self.game, "speed": self.speed}
