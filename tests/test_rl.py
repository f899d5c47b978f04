"""hypermeta.rl: the physics really changes, the generated policy starts as a normal one and
learns, gradients reach the hypernetwork, generated == exported, resume, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hypermeta.checkpoint import CheckpointError
from hypermeta.config import ConfigError
from hypermeta.rl.envs import CARTPOLE, PENDULUM, ContextualEnv, GameEnv, game_set
from hypermeta.rl.policy import PolicyNet
from hypermeta.rl.run import (
    RLConfig,
    evaluate_rl,
    export_policy,
    fixed_contexts,
    load_rl_run,
    make_env,
    rollout_returns,
    train_rl,
)

TINY_PPO = {"n_envs": 4, "n_steps": 32, "batch_size": 128, "n_epochs": 10,
            "learning_rate": 1e-3, "gamma": 0.98, "gae_lambda": 0.8}


def _cartpole_config(**changes: object) -> RLConfig:
    data: dict[str, object] = {"env": {"family": "cartpole"}, "ppo": TINY_PPO,
                               "total_steps": 512, "chunk_steps": 256,
                               "eval": {"contexts": 2, "episodes": 2}}
    data.update(changes)
    return RLConfig.parse(data)


def _thetas(context: list[float], actions: list[int]) -> np.ndarray:
    env = ContextualEnv("cartpole", CARTPOLE, context=context)
    env.reset(seed=3)
    out = [env.step(a)[0][2] for a in actions]
    return np.array(out)


# ------------------------------------------------------------------------------- physics
def test_cartpole_context_changes_the_dynamics() -> None:
    actions = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]  # short: the pole stays up in every context
    base = _thetas([0.5, 0.1, 10.0], actions)
    assert np.array_equal(base, _thetas([0.5, 0.1, 10.0], actions))  # same seed: same run
    for changed in ([1.5, 0.1, 10.0], [0.5, 1.0, 10.0], [0.5, 0.1, 30.0]):
        assert np.abs(_thetas(changed, actions) - base).max() > 1e-3, changed
    env = ContextualEnv("cartpole", CARTPOLE, context=[1.5, 0.4, 10.0])
    env.reset(seed=0)
    inner = env.env.unwrapped
    # the derived constants the step reads are recomputed (gym PR#3317, rl-generalization#11)
    assert inner.polemass_length == pytest.approx(1.5 * 0.4)
    assert inner.total_mass == pytest.approx(0.4 + inner.masscart)


def test_pendulum_context_changes_the_dynamics() -> None:
    speeds = {}
    for context in ([1.0, 1.0, 10.0], [2.0, 1.0, 10.0], [1.0, 2.0, 10.0], [1.0, 1.0, 20.0]):
        env = ContextualEnv("pendulum", PENDULUM, context=context)
        env.reset(seed=5)
        obs = [env.step(np.array([1.5], dtype=np.float32))[0] for _ in range(5)]
        speeds[tuple(context)] = obs[-1][2]  # angular velocity
    assert len({round(float(v), 6) for v in speeds.values()}) == 4


def test_context_sets_and_normalisation() -> None:
    config = _cartpole_config(eval={"contexts": 50, "episodes": 1})
    lo, hi = np.array(CARTPOLE.train).T
    interp = np.array(fixed_contexts(config, "interp"))
    extrap = np.array(fixed_contexts(config, "extrap"))
    assert ((interp >= lo) & (interp <= hi)).all()
    assert (((extrap < lo) | (extrap > hi)).any(1)).all()  # each one outside somewhere
    blo, bhi = np.array(CARTPOLE.bounds).T
    assert ((extrap >= blo) & (extrap <= bhi)).all()
    assert np.array_equal(interp, np.array(fixed_contexts(config, "interp")))  # fixed
    env = ContextualEnv("cartpole", CARTPOLE, context=[0.75, 0.05, 10.0])
    obs, info = env.reset(seed=0)
    assert obs[-3:] == pytest.approx([1.0, -1.0, 0.0])  # the train range maps to [-1, 1]
    assert info["context"].tolist() == [0.75, 0.05, 10.0]


@pytest.mark.parametrize(("context", "message"), [
    ([9.0, 0.1, 10.0], "length=9 is outside its declared bounds"),
    ([0.5, 0.1], "shape [3]"),
    ([0.5, float("nan"), 10.0], "NaN"),
    (["a", 1, 2], "3 numbers"),
])
def test_bad_contexts_are_refused(context: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ContextualEnv("cartpole", CARTPOLE, context=context)


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown MinAtar game"):
        RLConfig.parse({"env": {"family": "minatar", "games": ["pong"]}})
    with pytest.raises(ConfigError, match="unknown context parameter"):
        RLConfig.parse({"env": {"family": "cartpole", "train": {"gravity": [1, 2]}}})
    with pytest.raises(ConfigError, match="outside its declared bounds"):
        RLConfig.parse({"env": {"family": "pendulum", "context": [1.0, 1.0, 99.0]}})
    with pytest.raises(ConfigError, match="env.games and env.speed apply"):
        RLConfig.parse({"env": {"family": "cartpole", "games": ["breakout"]}})
    with pytest.raises(ConfigError, match="variant"):
        RLConfig.parse({"env": {"family": "cartpole"}, "policy": {"variant": "both"}})


# ------------------------------------------------------------------------------- policies
def test_generated_policy_starts_as_a_normal_one_and_batched_equals_per_sample() -> None:
    torch.manual_seed(0)
    net = PolicyNet("hypernet", 4, 3, 2)
    obs = torch.randn(1, 4).expand(6, 4)
    contexts = torch.randn(6, 3) * 2
    logits, value = net(torch.cat([obs, contexts], 1))
    # bias-HyperInit: every context gets the same, normally initialised network at step 0
    assert torch.allclose(logits, logits[:1].expand_as(logits))
    assert logits.abs().max() < 0.1  # the policy head's gain 0.01: near-uniform actions
    with torch.no_grad():  # move the generator off its start: contexts now matter
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.cat([torch.randn(6, 4), contexts], 1)
    batched = net.forward_actor(x)
    single = torch.cat([net.forward_actor(x[i:i + 1]) for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-6)
    assert not torch.allclose(batched[0], batched[1])
    with pytest.raises(ValueError, match=r"shape \[B, 4 \+ 3\]"):
        net(torch.randn(6, 5))


@pytest.mark.parametrize("variant", ["hypernet", "concat", "blind"])
def test_policy_for_is_the_policy_on_that_context(variant: str) -> None:
    net = PolicyNet(variant, 4, 3, 2)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    context = torch.tensor([0.3, -0.5, 1.2])
    obs = torch.randn(7, 4)
    plain = net.policy_for(context)
    expected = net.forward_actor(torch.cat([obs, context.expand(7, 3)], 1))
    assert torch.allclose(plain(obs), expected, atol=1e-5)
    assert not any(isinstance(m, PolicyNet) for m in plain.modules())


# ------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hypernet CartPole policy after ~4k env steps on the default physics (easy)."""
    run_dir = tmp_path_factory.mktemp("rl") / "cartpole"
    config = _cartpole_config(total_steps=4096, chunk_steps=2048, seed=1,
                              env={"family": "cartpole", "context": [0.5, 0.1, 10.0]},
                              ppo={**TINY_PPO, "n_envs": 8})
    train_rl(config, run_dir)
    return run_dir


def test_ppo_trains_the_hypernetwork_and_beats_random(trained: Path) -> None:
    run = load_rl_run(trained)
    assert run.steps == 4096
    # the delta heads started at zero: gradients reached the hypernetwork
    deltas = [run.net.pi.hyper.head.weight, run.net.vf.hyper.head.weight]
    assert all(float(d.detach().abs().sum()) > 0 for d in deltas)
    context = [0.5, 0.1, 10.0]
    learned = evaluate_rl(run, [context], episodes=5)[0]
    envs = [make_env(run.config, context=context) for _ in range(20)]
    rng = np.random.default_rng(0)
    random_returns = []
    for i, env in enumerate(envs):
        env.reset(seed=i)
        total, done = 0.0, False
        while not done:
            _, r, terminated, truncated, _ = env.step(int(rng.integers(2)))
            total, done = total + r, terminated or truncated
        random_returns.append(total)
    assert learned > 3 * np.mean(random_returns), (learned, np.mean(random_returns))
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [m["steps"] for m in metrics] == [2048, 4096]


def test_generated_equals_exported(trained: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    from hypermeta.export import load_safetensors_network

    run = load_rl_run(trained)
    context = [0.6, 0.2, 9.0]
    obs = torch.randn(16, 4)
    with_ctx = torch.cat([obs, run.normalised_context(context).expand(16, 3)], 1)
    expected = run.net.forward_actor(with_ctx).detach()
    onnx_path = export_policy(run, context, tmp_path / "p.onnx", "onnx")
    session = onnxruntime.InferenceSession(str(onnx_path))
    got = session.run(None, {session.get_inputs()[0].name: obs.numpy()})[0]
    assert np.allclose(got, expected.numpy(), atol=1e-5)
    sft = export_policy(run, context, tmp_path / "p.safetensors", "safetensors")
    assert torch.allclose(load_safetensors_network(sft)(obs), expected, atol=1e-6)


def test_resume_and_refusals(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = _cartpole_config(total_steps=512, chunk_steps=128)
    first = train_rl(config, run_dir, max_steps=128)
    assert (first.steps_done, first.complete) == (128, False)
    second = train_rl(config, run_dir)
    assert (second.steps_done, second.complete) == (512, True)
    with pytest.raises(ConfigError, match="another config"):
        train_rl(_cartpole_config(total_steps=1024), run_dir)
    with pytest.raises(ValueError, match="outside its declared bounds"):
        load_rl_run(run_dir).policy([0.5, 0.1, 500.0])
    ckpt = run_dir / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_rl_run(run_dir)


# ---------------------------------------------------------------------------------- games
def test_minatar_games_as_tasks_and_a_real_atari_game(tmp_path: Path) -> None:
    pytest.importorskip("minatar", reason="pip install --no-deps minatar")
    games = game_set("minatar", ["breakout", "space_invaders"])
    assert games.channels == 6  # space_invaders' channels; breakout's 4 are zero-padded
    env = GameEnv(games, game="space_invaders")
    obs, info = env.reset(seed=0)
    assert obs.shape == (6 * 100 + 2,) and obs[-2:].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="unknown game 'pong'"):
        GameEnv(games, game="pong")
    config = RLConfig.parse({"env": {"family": "minatar", "games": ["breakout", "asterix"]},
                             "ppo": {**TINY_PPO, "batch_size": 64},
                             "total_steps": 128, "chunk_steps": 128})
    train_rl(config, tmp_path / "minatar")
    run = load_rl_run(tmp_path / "minatar")
    policy = run.policy("asterix")  # the CNN with the game's FiLM merged into its weights
    frames = torch.rand(5, run.net.obs_dim)
    expected = run.net.forward_actor(torch.cat([frames, torch.tensor([[0.0, 1.0]] * 5)], 1))
    assert torch.allclose(policy(frames), expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown game"):
        run.policy("freeway")
    pytest.importorskip("ale_py")
    atari = RLConfig.parse({"env": {"family": "atari", "games": ["ALE/Pong-v5"],
                                    "max_steps": 20},
                            "ppo": {**TINY_PPO, "n_envs": 1, "n_steps": 32, "batch_size": 32,
                                    "n_epochs": 1},
                            "total_steps": 32, "chunk_steps": 32})
    train_rl(atari, tmp_path / "atari")  # a real Atari game through the same wrapper
    returns = rollout_returns(load_rl_run(tmp_path / "atari").net,
                              [make_env(atari, game="ALE/Pong-v5")], seed=0)
    assert returns.shape == (1,) and np.isfinite(returns).all()


def test_cli_train_generate_and_bad_context(tmp_path: Path) -> None:
    config = tmp_path / "rl.yaml"
    config.write_text(json.dumps({"env": {"family": "pendulum"},
                                  "ppo": {**TINY_PPO, "batch_size": 64},
                                  "total_steps": 128, "chunk_steps": 128}))
    run_dir = tmp_path / "run"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hypermeta", *args], capture_output=True,
                              text=True, timeout=300)

    done = cli("rl", "train", str(config), "--out", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["complete"] is True
    out = tmp_path / "policy.safetensors"
    made = cli("generate", str(run_dir), "--descriptor", "1.2,0.8,9.5", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert out.is_file()
    bad = cli("generate", str(run_dir), "--descriptor", "1.2,0.8,90", "--out",
              str(tmp_path / "x.safetensors"))
    assert bad.returncode == 2 and "g=90 is outside its declared bounds" in bad.stderr
    assert not (tmp_path / "x.safetensors").exists()
    wrong = cli("train", str(config), "--out", str(tmp_path / "episodic"))
    assert wrong.returncode == 2 and "hypermeta rl train" in wrong.stderr


def test_inspect_report_of_an_rl_run(trained: Path, tmp_path: Path) -> None:
    import base64
    import io
    import re

    from PIL import Image

    from hypermeta.report import write_report

    page = write_report(trained, tmp_path / "report", tasks=50).read_text()
    assert "Context-embedding map" in page and "Generated policy weights" in page
    assert "colour: length, masspole, force_mag" in page and "Not shown" not in page
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("L"), dtype=float)
              for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert len(images) == 2 and all(image.std() > 5 for image in images)
    with pytest.raises(ValueError, match="'mass' is not a context parameter"):
        write_report(trained, tmp_path / "bad", colour_by=["mass"])
    assert not (tmp_path / "bad").exists()


def test_minatar_speed_changes_the_game_and_is_part_of_the_context() -> None:
    pytest.importorskip("minatar", reason="pip install --no-deps minatar")
    games = game_set("minatar", ["asterix", "space_invaders"], speed=[0.5, 2.0])
    assert games.context_dim == 3

    def frames(speed: float) -> np.ndarray:
        env = GameEnv(games, game="space_invaders", speed=speed)
        obs, info = env.reset(seed=4)
        assert info["speed"] == speed
        out = [env.step(0)[0] for _ in range(30)]
        return np.stack(out)

    slow, fast = frames(0.5), frames(2.0)
    assert not np.array_equal(slow[:, :-3], fast[:, :-3])  # the aliens move at other rates
    assert np.array_equal(frames(2.0), fast)  # and deterministically so
    assert slow[0, -1] == pytest.approx(-1.0) and fast[0, -1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\['breakout'\] have no speed parameter"):
        game_set("minatar", ["breakout", "asterix"], speed=[0.5, 2.0])
    with pytest.raises(ValueError, match="speed 9.0 is outside its declared bounds"):
        GameEnv(games, game="asterix", speed=9.0)
    config = RLConfig.parse({"env": {"family": "minatar", "games": ["asterix"],
                                     "speed": [0.5, 2.0]}})
    assert fixed_contexts(config, "games") == ["asterix:0.5", "asterix:1.25", "asterix:2"]
    with pytest.raises(ConfigError, match="env.games and env.speed apply"):
        RLConfig.parse({"env": {"family": "cartpole", "speed": [0.5, 2.0]}})
