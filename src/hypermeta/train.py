"""``fit(config)``: episodic meta-training for every method, with validation, early stopping,
best/last checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hypermeta.build import build_learner, build_tasks
from hypermeta.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from hypermeta.config import ConfigError, RunConfig
from hypermeta.evaluate import evaluate, higher_is_better, predictor, task_loss

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


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, extra: dict[str, Tensor],
                       saved: dict[str, Any]) -> None:
    entries: dict[int, dict[str, Any]] = {}
    for name, value in extra.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            entries.setdefault(int(index), {})[key] = value
    for name, value in saved["scalars"].items():
        index, key = name.split("/", 1)
        entries.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": entries, "param_groups": saved["param_groups"]})


def fit(config: RunConfig, run_dir: str | Path, *, target: nn.Module | None = None,
        resume: bool = True, max_steps: int | None = None, progress: bool = True) -> FitResult:
    """Meta-train ``config.method`` on ``config.tasks``; checkpoints and metrics in ``run_dir``.

    Arguments:
        config: the validated run configuration.
        run_dir: folder for ``config.json``, ``last.safetensors``, ``best.safetensors`` and
            ``metrics.jsonl``. An existing run with the same config is resumed exactly (same
            RNG state, next batch and losses); a different config there is an error.
        target: the user's own target module when ``config.target.name`` is ``"custom"``.
        resume: set False to refuse an existing run instead of resuming it.
        max_steps: stop this call after that many steps (a chunk of a longer run); the run
            resumes from there next time.
        progress: show a progress bar with live loss, validation metric and ETA.
    """
    run_dir = Path(run_dir)
    config_json = config.to_json()
    last, best = run_dir / "last.safetensors", run_dir / "best.safetensors"
    if (run_dir / "config.json").exists():
        old = json.loads((run_dir / "config.json").read_text())
        with contextlib.suppress(ConfigError):  # fields added since (with their defaults)
            old = json.loads(RunConfig.from_dict(old).to_json())  # do not make it different
        if old != json.loads(config_json):
            raise ConfigError(f"{run_dir} holds a run with a different config; choose another "
                              "output folder or delete it")
        if not resume:
            raise ConfigError(f"{run_dir} already holds this run; pass resume=True to continue")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.json", (json.dumps(json.loads(config_json), indent=2)
                                                + "\n").encode())
    torch.manual_seed(config.seed)  # model initialisation
    tasks = build_tasks(config)
    learner = build_learner(config, tasks, target)
    kind = tasks.task_kind
    params = [p for p in learner.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params or [nn.Parameter(torch.zeros(1))], lr=config.train.lr,
                                 weight_decay=config.train.weight_decay)
    scheduler = _schedule(optimizer, config)
    generator = torch.Generator().manual_seed(config.seed)
    state: dict[str, Any] = {"step": 0, "best_val": None, "best_step": None, "bad_evals": 0,
                             "stopped_early": False, "train_seconds": 0.0}
    if last.exists():
        weights, extra, meta = load_checkpoint(last)
        learner.load_state_dict(weights)
        _restore_optimizer(optimizer, extra, meta["state"]["optimizer"])
        scheduler.load_state_dict(meta["state"]["scheduler"])
        generator.set_state(extra["rng/train"])
        torch.set_rng_state(extra["rng/torch"])
        state = meta["state"]["trainer"]
        _truncate_metrics(run_dir / "metrics.jsonl", state["step"])
        log.info("resumed %s at step %d", run_dir, state["step"])
    else:  # a fresh start: forget metrics of an attempt that died before its first checkpoint
        _truncate_metrics(run_dir / "metrics.jsonl", 0)
        if config.train.pretrain_steps:
            _pretrain(learner, tasks, config, generator)
    train_steps = config.train.steps if params else 0
    val_set = tasks.fixed_tasks("val", config.train.val_tasks)
    better = higher_is_better(kind)
    stop_at = train_steps if max_steps is None else min(train_steps, state["step"] + max_steps)
    writer = _tensorboard(run_dir)

    def save(path: Path) -> str:
        tensors, optim_state = _optimizer_tensors(optimizer)
        tensors["rng/train"] = generator.get_state()
        tensors["rng/torch"] = torch.get_rng_state()
        return save_checkpoint(path, config_json=config_json, model=learner.state_dict(),
                               extra_tensors=tensors,
                               state={"trainer": state, "optimizer": optim_state,
                                      "scheduler": scheduler.state_dict()})

    bar = tqdm(total=train_steps, initial=state["step"], disable=not progress, unit="step",
               dynamic_ncols=True, desc=f"{config.method} {tasks.name}")
    metrics = (run_dir / "metrics.jsonl").open("a")
    started = time.perf_counter()
    try:
        while state["step"] < stop_at and not state["stopped_early"]:
            learner.train()
            episode = tasks.sample("train", config.train.meta_batch, generator)
            assert episode.query_y is not None
            loss = task_loss(learner(episode), episode.query_y, kind)
            objective = loss
            if config.gates.enabled and config.gates.sparsity:
                cost: Tensor = learner.last_structure_cost  # type: ignore[assignment]
                objective = loss + config.gates.sparsity * cost
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(objective)
            if config.train.clip is not None:
                nn.utils.clip_grad_norm_(params, config.train.clip)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            step = state["step"]
            bar.update(1)
            if step % config.train.log_every == 0:
                record = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
                metrics.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4f}", val=state["best_val"])
                if writer is not None:
                    writer.add_scalar("train/loss", record["loss"], step)
            if step % config.train.val_every == 0 or step == train_steps:
                learner.eval()
                result = evaluate(predictor(learner), val_set, kind, batch=config.eval.batch)
                metrics.write(json.dumps({"step": step, "val": result["mean"],
                                          "val_ci95": result["ci95"]}) + "\n")
                if writer is not None:
                    writer.add_scalar("val/metric", result["mean"], step)
                delta = config.train.min_delta
                improved = state["best_val"] is None or (
                    result["mean"] > state["best_val"] + delta if better
                    else result["mean"] < state["best_val"] - delta)
                if improved:
                    state.update(best_val=result["mean"], best_step=step, bad_evals=0)
                else:
                    state["bad_evals"] += 1
                    patience = config.train.patience
                    state["stopped_early"] = patience is not None and state["bad_evals"] >= patience
                state["train_seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                metrics.flush()
                if improved:
                    save(best)
                save(last)
                bar.set_postfix(loss=f"{loss.item():.4f}", val=f"{result['mean']:.4f}")
    finally:
        bar.close()
        metrics.close()
        if writer is not None:
            writer.close()
    state["train_seconds"] += time.perf_counter() - started
    cid = save(last)
    if not best.exists():  # nothing to validate (e.g. scratch): the last state is the best
        save(best)
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


def _pretrain(learner: nn.Module, tasks: Any, config: RunConfig,
              generator: torch.Generator) -> None:
    """Fit one network to the pooled training data, then start the learner from it."""
    from hypermeta.baselines import MAML
    from hypermeta.model import HyperModel

    if not isinstance(learner, (HyperModel, MAML)):
        raise ConfigError(f"train.pretrain_steps: pre-training applies to hypernet and MAML "
                          f"runs, not {config.method}")
    target = learner.target
    spec = target.spec
    flat = nn.Parameter(spec.flatten(target.initial_params()).clone())
    shared = [p for p in target.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([flat, *shared], lr=config.train.lr)
    for _ in range(config.train.pretrain_steps):
        episode = tasks.sample("train", config.train.meta_batch, generator)
        assert episode.query_y is not None
        params = spec.unflatten(flat.expand(episode.num_tasks, -1))  # one network for all
        x = torch.cat([episode.support_x, episode.query_x], dim=1)
        y = torch.cat([episode.support_y, episode.query_y], dim=1)
        loss = task_loss(target(params, x), y, tasks.task_kind)
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
