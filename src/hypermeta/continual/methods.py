"""Continual learners: a task-conditioned hypernetwork and the usual baselines, one interface.

Every learner answers ``logits(x, task)`` (``[N, outputs]``; task ``t`` reads its first
``classes`` columns) and ``loss(x, y, task, classes)`` (the task's cross-entropy plus the
method's penalty), and is told when a task begins and ends. ``learn_sequence`` (``run.py``)
drives them all the same way, so every number comes from the same loop, data and budget.

- ``HyperCL``: von Oswald et al., "Continual learning with hypernetworks" (ICLR 2020). A
  ``TaskEmbedding`` feeds a ``ChunkedHyperNet`` that generates every parameter of the user's
  module; while task ``t`` is learned, the output regulariser
  ``beta / t * sum_{t' < t} ||h(e_t') - h*(e_t')||^2`` keeps the weights generated for earlier
  tasks where they were before the task (no lookahead). Earlier embeddings stay fixed.
- ``Finetune``: plain sequential training (the lower bound).
- ``EWC``: elastic weight consolidation in its online form (Schwarz et al. 2018, gamma = 1: one
  running Fisher, anchored at the last task's weights), Fisher from sampled labels.
- ``SI``: synaptic intelligence (Zenke et al. 2017): per-parameter importance from the path
  integral of gradient x update over each task.
- ``Separate``: a fresh copy of the network per task (no forgetting, T times the parameters).
- ``Joint`` multi-task training on all tasks at once is the same network as ``Finetune``, driven
  by ``learn_sequence(..., joint=True)`` (the upper bound).

The baselines are multi-head when the module ends in an ``nn.Linear`` (the usual task-incremental
setting: a head per task on a shared trunk); the hypernetwork generates the whole network, head
included, per task.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from hypermeta.encoders import TaskEmbedding
from hypermeta.hypernets import ChunkedHyperNet, count_parameters
from hypermeta.target import FunctionalTarget

METHODS = ("hypernet", "finetune", "ewc", "si", "separate", "joint")


def _check_task(task: int, num_tasks: int) -> None:
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < num_tasks:
        raise ValueError(f"unknown task id {task!r}; this learner knows tasks "
                         f"0..{num_tasks - 1}")


def _reset(module: nn.Module) -> nn.Module:
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    return module


class ContinualLearner(nn.Module):
    """What ``learn_sequence`` drives. Subclasses set ``num_tasks`` and implement ``logits``."""

    num_tasks: int

    def logits(self, x: Tensor, task: int) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, task: int) -> Tensor:
        return self.logits(x, task)

    def penalty(self, task: int) -> Tensor | None:
        """The method's regulariser while ``task`` is learned (None: none)."""
        return None

    def loss(self, x: Tensor, y: Tensor, task: int, classes: int) -> Tensor:
        _check_task(task, self.num_tasks)
        logits = self.logits(x, task)
        if logits.shape[-1] < classes:
            raise ValueError(f"task {task} has {classes} classes but the network emits "
                             f"{logits.shape[-1]} logits: widen its output layer")
        task_loss = F.cross_entropy(logits[:, :classes], y)
        extra = self.penalty(task)
        return task_loss if extra is None else task_loss + extra

    def train_parameters(self, task: int) -> list[nn.Parameter]:
        """What the optimizer updates while ``task`` is learned."""
        return [p for p in self.parameters() if p.requires_grad]

    def begin_task(self, task: int) -> None:
        """Called before the first step on ``task``."""

    def after_backward(self, task: int) -> None:
        """Called between ``backward`` and the optimizer step."""

    def after_step(self, task: int) -> None:
        """Called after every optimizer step."""

    def end_task(self, task: int, x: Tensor, y: Tensor, classes: int,
                 generator: torch.Generator) -> None:
        """Called after the last step on ``task`` with (a sample of) its training data."""

    def parameter_count(self) -> int:
        """Trainable parameters: what a user keeps to run every learned task (the penalty's
        buffers, needed only to learn further tasks, are not counted)."""
        return count_parameters(self)


# ---------------------------------------------------------------------------- hypernetwork
class HyperCL(ContinualLearner):
    """A task-conditioned chunked hypernetwork generating every parameter of ``module``.

    Arguments:
        module: the target network, e.g. ``hypermeta.networks.MLP(784, 10, (256, 256))``; its
            output width covers the widest task.
        num_tasks: length of the sequence (one learned embedding each).
        beta: strength of the output regulariser (von Oswald et al.: 0.01).
        embedding_dim, chunk_size, chunk_dim, hidden: the ``ChunkedHyperNet`` and task
            embeddings; chunks keep the generator smaller than the target
            (``compression_ratio``).
        generate: which of the module's parameters are generated (``FunctionalTarget``);
            the rest are shared and unprotected.

    Example:
        >>> learner = HyperCL(MLP(784, 10, (256, 256)), num_tasks=10)
        >>> learner.logits(x, task=3).shape        # [N, 10]
    """

    anchors: Tensor

    def __init__(self, module: nn.Module, num_tasks: int, *, beta: float = 0.01,
                 embedding_dim: int = 32, chunk_size: int = 2000, chunk_dim: int = 32,
                 hidden: Sequence[int] = (100, 100), generate: str | list[str] = "all") -> None:
        super().__init__()
        if not beta >= 0 or not math.isfinite(beta):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        self.num_tasks, self.beta = num_tasks, beta
        self.target = FunctionalTarget(module, generate=generate, batching="vmap")
        self.embedding = TaskEmbedding(num_tasks, embedding_dim)
        self.hypernet = ChunkedHyperNet(self.target.spec, embedding_dim, chunk_size=chunk_size,
                                        chunk_dim=chunk_dim, hidden=hidden)
        # the weights generated for each learned task when the current one began
        self.register_buffer("anchors", torch.zeros(num_tasks, self.target.spec.numel()))

    def params(self, tasks: Sequence[int] | Tensor) -> dict[str, Tensor]:
        """The generated parameters of ``tasks`` (``{name: [T, *shape]}``)."""
        ids = torch.as_tensor(tasks, dtype=torch.long, device=self.anchors.device)
        for t in ids.tolist():
            _check_task(t, self.num_tasks)
        params: dict[str, Tensor] = self.hypernet(self.embedding.embedding(ids))
        return params

    def flat(self, tasks: Sequence[int]) -> Tensor:
        """Generated parameters of ``tasks`` as ``[T, P]``."""
        return self.target.spec.flatten(self.params(tasks))

    def logits(self, x: Tensor, task: int) -> Tensor:
        _check_task(task, self.num_tasks)
        out: Tensor = self.target(self.params([task]), x[None])[0]
        return out

    def penalty(self, task: int) -> Tensor | None:
        if task == 0 or self.beta == 0:
            return None
        earlier = torch.arange(task, device=self.anchors.device)
        z = self.embedding.embedding(earlier).detach()  # earlier embeddings stay fixed
        now = self.target.spec.flatten(self.hypernet(z))
        return self.beta * (now - self.anchors[:task]).pow(2).sum(dim=1).mean()

    def end_task(self, task: int, x: Tensor, y: Tensor, classes: int,
                 generator: torch.Generator) -> None:
        with torch.no_grad():
            self.anchors[: task + 1] = self.flat(list(range(task + 1)))

    def generate(self, task: int) -> nn.Module:
        """Task ``task``'s network as a plain ``nn.Module`` (no hypermeta needed to run it)."""
        _check_task(task, self.num_tasks)
        with torch.no_grad():
            return self.target.materialize({k: v[0] for k, v in self.params([task]).items()})

    def parameter_count(self) -> int:
        return count_parameters(self.hypernet) + count_parameters(self.embedding)

    @property
    def param_ratio(self) -> float:
        """Hypernetwork + task embeddings over one target network's parameters."""
        return self.parameter_count() / self.target.spec.numel()


# ------------------------------------------------------------------------------ baselines
class MultiHead(ContinualLearner):
    """``module`` with its final ``nn.Linear`` replicated per task (a head per task on a shared
    trunk); a module that does not end in one keeps a single shared output."""

    def __init__(self, module: nn.Module, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        module = copy.deepcopy(module)
        if isinstance(module, nn.Sequential) and isinstance(module[-1], nn.Linear):
            self.trunk: nn.Module = nn.Sequential(*list(module.children())[:-1])
            self.heads = nn.ModuleList(_reset(copy.deepcopy(module[-1]))
                                       for _ in range(num_tasks))
        else:
            self.trunk, self.heads = module, nn.ModuleList([nn.Identity()])

    def logits(self, x: Tensor, task: int) -> Tensor:
        _check_task(task, self.num_tasks)
        head = self.heads[task if len(self.heads) > 1 else 0]
        out: Tensor = head(self.trunk(x))
        return out

    def _vector(self) -> Tensor:
        return torch.cat([p.reshape(-1) for p in self.parameters()])


class Finetune(MultiHead):
    """Sequential training without any protection (the lower bound); also ``Joint``'s model."""


class EWC(MultiHead):
    """Online EWC: ``lam / 2 * sum_i F_i (theta_i - theta*_i)^2`` with ``F`` the running sum of
    each task's diagonal Fisher (labels sampled from the model) and ``theta*`` the weights after
    the last task."""

    fisher: Tensor
    anchor: Tensor
    learned: Tensor

    def __init__(self, module: nn.Module, num_tasks: int, *, lam: float = 100.0,
                 fisher_samples: int = 600) -> None:
        super().__init__(module, num_tasks)
        if not lam >= 0 or not math.isfinite(lam) or fisher_samples < 1:
            raise ValueError(f"EWC needs lam >= 0 and fisher_samples >= 1; got {lam}, "
                             f"{fisher_samples}")
        self.lam, self.fisher_samples = lam, fisher_samples
        n = sum(p.numel() for p in self.parameters())
        self.register_buffer("fisher", torch.zeros(n))
        self.register_buffer("anchor", torch.zeros(n))
        self.register_buffer("learned", torch.zeros((), dtype=torch.long))

    def penalty(self, task: int) -> Tensor | None:
        if int(self.learned) == 0 or self.lam == 0:
            return None
        return 0.5 * self.lam * (self.fisher * (self._vector() - self.anchor).pow(2)).sum()

    def end_task(self, task: int, x: Tensor, y: Tensor, classes: int,
                 generator: torch.Generator) -> None:
        n = min(self.fisher_samples, len(x))
        rows = torch.randperm(len(x), generator=generator)[:n].to(x.device)
        params = {k: v.detach() for k, v in self.named_parameters()}

        def logp(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            logits: Tensor = functional_call(self, p, (xi[None], task))[:, :classes]
            return (F.log_softmax(logits, dim=-1)[0] * yi).sum()  # yi: one-hot

        with torch.no_grad():
            probs = F.softmax(self.logits(x[rows], task)[:, :classes], dim=-1)
            sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        onehot = F.one_hot(sampled, classes).to(x.dtype)
        grads = vmap(grad(logp), in_dims=(None, 0, 0))(params, x[rows], onehot)
        fisher = torch.cat([g.pow(2).mean(0).reshape(-1) for g in grads.values()])
        with torch.no_grad():
            self.fisher += fisher
            self.anchor.copy_(self._vector())
            self.learned += 1


class SI(MultiHead):
    """Synaptic intelligence: ``c * sum_i Omega_i (theta_i - theta*_i)^2``, ``Omega`` summing
    each task's ``omega_i / (delta_i^2 + xi)`` (``omega``: path integral of -grad x update with
    the gradient of the task loss alone, ``delta``: the task's total change of ``theta_i``), as
    in Zenke et al. 2017 (no clipping of ``omega``)."""

    importance: Tensor
    anchor: Tensor
    path: Tensor
    start: Tensor
    before: Tensor
    grad: Tensor
    learned: Tensor

    def __init__(self, module: nn.Module, num_tasks: int, *, c: float = 0.1,
                 xi: float = 1e-3) -> None:
        super().__init__(module, num_tasks)
        if not c >= 0 or not xi > 0:
            raise ValueError(f"SI needs c >= 0 and xi > 0; got {c}, {xi}")
        self.c, self.xi = c, xi
        n = sum(p.numel() for p in self.parameters())
        for name in ("importance", "anchor", "path", "start", "before", "grad"):
            self.register_buffer(name, torch.zeros(n), persistent=name in ("importance",
                                                                           "anchor"))
        self.register_buffer("learned", torch.zeros((), dtype=torch.long))

    def penalty(self, task: int) -> Tensor | None:
        if int(self.learned) == 0 or self.c == 0:
            return None
        return self.c * (self.importance * (self._vector() - self.anchor).pow(2)).sum()

    def begin_task(self, task: int) -> None:
        with torch.no_grad():
            self.start.copy_(self._vector())
            self.path.zero_()

    def after_backward(self, task: int) -> None:
        with torch.no_grad():
            now = self._vector()
            self.grad.copy_(torch.cat([
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in self.parameters()]))
            if int(self.learned) and self.c:  # the path integral uses the task loss alone
                self.grad -= 2 * self.c * self.importance * (now - self.anchor)
            self.before.copy_(now)

    def after_step(self, task: int) -> None:
        with torch.no_grad():
            self.path -= self.grad * (self._vector() - self.before)

    def end_task(self, task: int, x: Tensor, y: Tensor, classes: int,
                 generator: torch.Generator) -> None:
        with torch.no_grad():
            now = self._vector()
            self.importance += self.path / ((now - self.start).pow(2) + self.xi)
            self.anchor.copy_(now)
            self.learned += 1


class Separate(ContinualLearner):
    """A freshly initialised copy of ``module`` per task: nothing shared, nothing forgotten."""

    def __init__(self, module: nn.Module, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.nets = nn.ModuleList(_reset(copy.deepcopy(module)) for _ in range(num_tasks))

    def logits(self, x: Tensor, task: int) -> Tensor:
        _check_task(task, self.num_tasks)
        out: Tensor = self.nets[task](x)
        return out

    def train_parameters(self, task: int) -> list[nn.Parameter]:
        return list(self.nets[task].parameters())
