"""``fit(config)``: episodic meta-training for every method, with validation, early stopping,
best/last checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypermeta.checkpoint import (
    load_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)
from hypermeta.config import ConfigError, RunConfig
from hypermeta.distributed import World, resolve_device
from hypermeta.evaluate import summarize, task_values
from hypermeta.files import atomic_write_bytes
from hypermeta.hypernets import SplitHyperNet
from hypermeta.model import Learner
from hypermeta.runs import build_learner, build_tasks, cpu_layout, load_run
from hypermeta.target import FunctionalTarget

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a (possibly partial) training call achieved."""

    run_dir: str
    steps_done: int
    complete: bool
    stopped_early: bool
    best_val: float | None
    best_step: int | None
    train_seconds: float
    content_id: str


class Callback:
    """What ``fit`` reports while it runs; subclass and override what you need. ``fit`` itself
    prints nothing: the CLI installs a progress bar (``hypermeta.ProgressBar``) this way.

    ``on_step`` gets the training loss only every ``train.log_every`` steps (reading it is a
    device sync), else ``None``.
    """

    def on_start(self, *, description: str, total: int, initial: int) -> None:
        """Training starts (or resumes at ``initial``) towards ``total`` steps."""

    def on_step(self, step: int, loss: float | None) -> None:
        """A training step finished."""

    def on_validate(self, step: int, result: dict[str, float]) -> None:
        """A validation finished (``result``: mean, ci95, std, tasks)."""

    def on_end(self) -> None:
        """This call of ``fit`` ends (finished, chunk done, stopped early or failed)."""


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    # torch's intra-op threads for this run only (config.threads); restored afterwards
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _schedule(optimizer: torch.optim.Optimizer,
              config: RunConfig) -> torch.optim.lr_scheduler.LambdaLR:
    train = config.train
    if train.schedule == "cosine":
        total = max(train.steps, 1)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if train.schedule == "step":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 ** (s // train.step_every))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def _fusable(params: list[nn.Parameter], device: torch.device) -> bool:
    """Adam's fused kernel (one pass per tensor instead of ~10 elementwise ops): 1.5-2x the
    sinusoid meta-training step on the CPU. It takes floating tensors on the CPU or CUDA."""
    return bool(params) and device.type in ("cpu", "cuda") and all(
        p.is_floating_point() and p.device.type == device.type for p in params)


def fit(config: RunConfig, run_dir: str | Path, *, target: nn.Module | None = None,
        resume: bool = True, max_steps: int | None = None,
        max_seconds: float | None = None, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Meta-train ``config.method`` on ``config.tasks``; checkpoints and metrics in ``run_dir``.

    Arguments:
        config: the validated run configuration.
        run_dir: folder for ``config.json``, ``last.safetensors``, ``best.safetensors`` and
            ``metrics.jsonl``. An existing run with the same config is resumed exactly (same
            RNG state, next batch and losses); a different config there is an error. Nothing
            is written before the task family, its data and the learner are built.
        target: the user's own target module when ``config.target.name`` is ``"custom"``.
        resume: set False to refuse an existing run instead of resuming it.
        max_steps: stop this call after that many steps (a chunk of a longer run); the run
            resumes from there next time.
        max_seconds: stop this call at the end of the first step that finishes past this
            many seconds of wall-clock time (checkpointed like ``max_steps``, so a rerun
            resumes exactly): chunked training with no helper outside the library.
        callbacks: progress reporting (``Callback``), e.g. ``[hypermeta.ProgressBar()]``.

    Returns:
        a ``FitResult`` (steps done, whether the run is complete, best validation metric).

    Example:
        >>> config = hypermeta.RunConfig.from_file("configs/sinusoid_hypernet.yaml")
        >>> result = hypermeta.fit(config, "runs/sin", max_steps=500)   # resumable chunk
    """
    if max_steps is not None and (isinstance(max_steps, bool) or max_steps < 0):
        raise ValueError(f"max_steps must be >= 0 (or None for the whole run), got {max_steps}")
    if max_seconds is not None and (isinstance(max_seconds, bool) or not max_seconds > 0):
        raise ValueError(f"max_seconds must be > 0 (or None for no limit), got {max_seconds}")
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    with _threads(config.threads):
        return _fit(config, Path(run_dir), target=target, resume=resume, max_steps=max_steps,
                    deadline=deadline, callbacks=callbacks)


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    # what makes two configs the same run: all but the settings that cannot change results
    return {k: v for k, v in config.items() if k not in ("threads", "device")}


def _fit(config: RunConfig, run_dir: Path, *, target: nn.Module | None, resume: bool,
         max_steps: int | None, deadline: float | None,
         callbacks: Sequence[Callback]) -> FitResult:
    config_json = config.to_json()
    last = run_dir / "last.safetensors"
    fresh = not (run_dir / "config.json").exists()
    if not fresh:
        old = json.loads((run_dir / "config.json").read_text())
        with contextlib.suppress(ConfigError):  # older versions, fields added since
            old = json.loads(RunConfig.from_saved(old).to_json())  # do not make it different
        if _identity(old) != _identity(json.loads(config_json)):
            raise ConfigError(f"{run_dir} holds a run with a different config; choose another "
                              "output folder or delete it")
        if not resume:
            raise ConfigError(f"{run_dir} already holds this run; pass resume=True to continue")
    device = resolve_device(config.device)
    world = World.from_env(device)
    if config.train.meta_batch % world.size:
        raise ConfigError(f"train.meta_batch {config.train.meta_batch} does not divide among "
                          f"{world.size} processes: make it a multiple of the world size")
    torch.manual_seed(config.seed)  # model initialisation
    tasks = build_tasks(config)  # may fail on missing data: before anything is written
    learner = cpu_layout(build_learner(config, tasks, target).to(device))
    val_set = tasks.fixed_tasks("val", config.train.val_tasks).to(device)
    _probe(learner, tasks, val_set, config)  # runs once, fits the labels: before any write
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            atomic_write_bytes(run_dir / "config.json",
                               (json.dumps(json.loads(config_json), indent=2) + "\n").encode())
    world.barrier()
    try:
        result = _train(config, run_dir, config_json, tasks, learner, val_set, max_steps,
                        deadline, callbacks, world, device)
        world.close()
        return result
    except BaseException:
        if world.main and fresh and not last.exists():  # no checkpoint: leave no half-made run
            for leftover in ("config.json", "metrics.jsonl"):
                (run_dir / leftover).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise


def _probe(learner: Learner, tasks: Any, val_set: Any, config: RunConfig) -> None:
    """One evaluation task through the learner and the kind's loss, before anything is
    written: a target whose output does not fit the labels (an out_dim that is not the way
    count, say) is a clear error here, not a traceback after the run folder exists."""
    _check_pretrain(learner, config)
    one = val_set.slice(0, 1)
    state = torch.get_rng_state()
    try:
        learner.eval()
        pred = learner.predict(one)
        tasks.kind.per_task_loss(pred, one.query_y)
    except (IndexError, RuntimeError, ValueError) as err:
        shape = list(pred.shape) if "pred" in locals() else "?"
        raise ConfigError(f"the {config.method} learner does not fit task family "
                          f"{tasks.name!r} ({tasks.kind.name}, out_dim {tasks.out_dim}): "
                          f"predictions {shape} vs labels {list(one.query_y.shape)}: "
                          f"{str(err).splitlines()[0]}") from None
    finally:
        torch.set_rng_state(state)
        learner.train()


def _check_pretrain(learner: Learner, config: RunConfig) -> None:
    from hypermeta.baselines import MAML
    from hypermeta.model import HyperModel

    if config.train.pretrain_steps and not isinstance(learner, (HyperModel, MAML)):
        raise ConfigError(f"train.pretrain_steps: pre-training applies to hypernet and MAML "
                          f"runs, not {config.method}")


def _train(config: RunConfig, run_dir: Path, config_json: str, tasks: Any, learner: Learner,
           val_set: Any, max_steps: int | None, deadline: float | None,
           callbacks: Sequence[Callback], world: World, device: torch.device) -> FitResult:
    kind = tasks.kind
    last, best = run_dir / "last.safetensors", run_dir / "best.safetensors"
    params = [p for p in learner.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(_param_groups(learner, params, config) if params
                                 else [nn.Parameter(torch.zeros(1))], lr=config.train.lr,
                                 weight_decay=config.train.weight_decay,
                                 fused=_fusable(params, device))
    scheduler = _schedule(optimizer, config)
    generator = torch.Generator().manual_seed(config.seed)
    state: dict[str, Any] = {"step": 0, "best_val": None, "best_step": None, "bad_evals": 0,
                             "stopped_early": False, "train_seconds": 0.0}
    provenance = tasks.provenance()
    if last.exists():
        weights, extra, meta = load_checkpoint(last)
        recorded = meta["state"].get("provenance", {})
        if recorded != provenance and meta.get("format") != "hypermeta-checkpoint/1":
            raise ConfigError(f"{run_dir} was trained on other data than {tasks.name!r} reads "
                              "now; resume it with the same data, or start a new run folder")
        trained_by = meta["state"]["trainer"].get("world_size", 1)
        if trained_by != world.size:
            raise ConfigError(f"{run_dir} was trained by {trained_by} process(es); resume it "
                              f"with the same number (this call has {world.size})")
        learner.load_state_dict(weights)
        restore_optimizer(optimizer, extra, meta["state"]["optimizer"])
        scheduler.load_state_dict(meta["state"]["scheduler"])
        generator.set_state(extra["rng/train"])
        torch.set_rng_state(extra["rng/torch"])
        state = meta["state"]["trainer"]
        if world.main:
            _truncate_metrics(run_dir / "metrics.jsonl", state["step"])
        log.info("resumed %s at step %d", run_dir, state["step"])
    else:  # a fresh start: forget metrics of an attempt that died before its first checkpoint
        if world.main:
            _truncate_metrics(run_dir / "metrics.jsonl", 0)
        if config.train.pretrain_steps:
            _pretrain(learner, tasks, config, generator, device)
    train_steps = config.train.steps if params else 0
    stop_at = train_steps if max_steps is None else min(train_steps, state["step"] + max_steps)
    state["world_size"] = world.size
    writer = _tensorboard(run_dir) if world.main else None
    callbacks = callbacks if world.main else ()
    share = world.share(config.train.meta_batch)
    val_share = _bounds(val_set.num_tasks, world)

    def save(path: Path) -> str:
        tensors, optim_state = optimizer_tensors(optimizer)
        tensors["rng/train"] = generator.get_state()
        tensors["rng/torch"] = torch.get_rng_state()
        model = {k: v.detach().cpu() for k, v in learner.state_dict().items()}
        return save_checkpoint(path, config_json=config_json, model=model,
                               extra_tensors=tensors,
                               state={"trainer": state, "optimizer": optim_state,
                                      "scheduler": scheduler.state_dict(),
                                      "provenance": provenance})

    for callback in callbacks:
        callback.on_start(description=f"{config.method} {tasks.name}", total=train_steps,
                          initial=state["step"])
    teacher = _teacher(config, device)
    metrics = (run_dir / "metrics.jsonl").open("a") if world.main else io.StringIO()
    started = time.perf_counter()
    first = True
    try:
        while state["step"] < stop_at and not state["stopped_early"]:
            learner.train()
            episode = tasks.sample("train", config.train.meta_batch, generator).to(device)
            if episode.query_y is None:
                raise ValueError(f"task family {tasks.name!r} sampled training tasks without "
                                 "query_y")
            if world.size > 1:  # every rank drew the whole batch; this one trains its share
                episode = episode.slice(*share)
            # the family's episodes are checked once per call; later steps skip the checks
            # (each is a device sync)
            warmup = state["step"] < config.gates.warmup_steps
            if warmup:  # every gate open, no sparsity cost (restored after the step)
                _hold_gates_open(learner, True)
            out = learner.outputs(episode, validate=first)
            first = False
            loss = kind.loss(out.pred, episode.query_y)
            objective = loss if out.extra_loss is None else loss + out.extra_loss
            if teacher is not None:
                objective = objective + config.gates.distill_weight * _distill(
                    out.pred, teacher, episode, kind.uses_classes)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(objective)
            if warmup:
                _hold_gates_open(learner, False)
            world.average_gradients(params)
            if config.train.clip is not None:
                nn.utils.clip_grad_norm_(params, config.train.clip)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            step = state["step"]
            logged: float | None = None
            if step % config.train.log_every == 0:
                logged = world.mean(loss.detach())
                record = {"step": step, "loss": logged, "lr": scheduler.get_last_lr()[0]}
                metrics.write(json.dumps(record) + "\n")
                if writer is not None:
                    writer.add_scalar("train/loss", logged, step)
            for callback in callbacks:
                callback.on_step(step, logged)
            if step % config.train.val_every == 0 or step == train_steps:
                learner.eval()
                result = summarize(world.gather(task_values(
                    learner, val_set.slice(*val_share), kind, batch=config.eval.batch)))
                metrics.write(json.dumps({"step": step, "val": result["mean"],
                                          "val_ci95": result["ci95"]}) + "\n")
                if writer is not None:
                    writer.add_scalar("val/metric", result["mean"], step)
                improved = kind.better(result["mean"], state["best_val"], config.train.min_delta)
                if improved:
                    state.update(best_val=result["mean"], best_step=step, bad_evals=0)
                else:
                    state["bad_evals"] += 1
                    patience = config.train.patience
                    state["stopped_early"] = patience is not None and state["bad_evals"] >= patience
                state["train_seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                metrics.flush()
                if world.main:
                    if improved:
                        save(best)
                    save(last)
                for callback in callbacks:
                    callback.on_validate(step, result)
            # the wall-clock limit: rank 0's clock decides for every rank (one tiny broadcast)
            if deadline is not None and world.broadcast(time.perf_counter() >= deadline):
                break
    finally:
        for callback in callbacks:
            callback.on_end()
        metrics.close()
        if writer is not None:
            writer.close()
    state["train_seconds"] += time.perf_counter() - started
    cid = ""
    if world.main:
        cid = save(last)
        if not best.exists():  # nothing to validate (e.g. scratch): the last state is the best
            save(best)
    cid = str(world.broadcast(cid))
    complete = state["step"] >= train_steps or state["stopped_early"]
    return FitResult(str(run_dir), state["step"], complete, state["stopped_early"],
                     state["best_val"], state["best_step"], state["train_seconds"], cid)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (an interrupted chunk)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional dependency: metrics.jsonl is always written
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _pretrain(learner: Learner, tasks: Any, config: RunConfig,
              generator: torch.Generator, device: torch.device) -> None:
    """Fit one network to the pooled training data, then start the learner from it."""
    from hypermeta.baselines import MAML
    from hypermeta.model import HyperModel

    _check_pretrain(learner, config)
    assert isinstance(learner, (HyperModel, MAML))
    target = learner.target
    spec = target.spec
    flat = nn.Parameter(spec.flatten(target.initial_params()).clone())
    shared = [p for p in target.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([flat, *shared], lr=config.train.lr)
    for _ in range(config.train.pretrain_steps):
        episode = tasks.sample("train", config.train.meta_batch, generator).to(device)
        assert episode.query_y is not None
        params = spec.unflatten(flat.expand(episode.num_tasks, -1))  # one network for all
        x = torch.cat([episode.support_x, episode.query_x], dim=1)
        y = torch.cat([episode.support_y, episode.query_y], dim=1)
        loss = tasks.kind.loss(target(params, x), y)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
    with torch.no_grad():
        if isinstance(learner, MAML):
            learner.init.copy_(flat)
        else:
            set_base = getattr(learner.hypernet, "set_base", None)
            if set_base is None:
                raise ConfigError("train.pretrain_steps: this hypernetwork has no set_base")
            set_base(flat.detach())


def _bounds(total: int, world: World) -> tuple[int, int]:
    """This rank's contiguous part of ``total`` evaluation tasks (sizes differ by at most 1)."""
    start = world.rank * total // world.size
    return start, (world.rank + 1) * total // world.size


def _hold_gates_open(learner: nn.Module, held: bool) -> None:
    target = getattr(learner, "target", None)
    if isinstance(target, FunctionalTarget):
        target.hold_gates_open(held)


def _param_groups(learner: nn.Module, params: list[nn.Parameter],
                  config: RunConfig) -> list[dict[str, Any]]:
    """One group, or two when a separate gate generator has its own learning rate."""
    hypernet = getattr(learner, "hypernet", None)
    scale = config.gates.head_lr_scale
    if scale == 1.0 or not isinstance(hypernet, SplitHyperNet):
        return [{"params": params}]
    side = {id(p) for p in hypernet.side_parameters()}
    return [{"params": [p for p in params if id(p) not in side]},
            {"params": [p for p in params if id(p) in side], "lr": config.train.lr * scale}]


def _teacher(config: RunConfig, device: torch.device) -> Learner | None:
    """The ungated run ``gates.distill_from`` names, frozen, in evaluation mode."""
    source = config.gates.distill_from
    if source is None:
        return None
    teacher = load_run(source).learner.to(device).eval()
    teacher.requires_grad_(False)
    return teacher


def _distill(pred: Tensor, teacher: Learner, episode: Any, classes: bool) -> Tensor:
    """MSE (regression) or KL(teacher || student) (classification) on the query set."""
    with torch.no_grad():
        target = teacher.outputs(episode, validate=False).pred
    if classes:
        width = pred.shape[-1]
        return F.kl_div(F.log_softmax(pred, -1).reshape(-1, width),
                        F.log_softmax(target, -1).reshape(-1, width), log_target=True,
                        reduction="batchmean")
    return F.mse_loss(pred, target)
