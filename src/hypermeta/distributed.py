"""Data-parallel meta-training under ``torchrun`` (``torch.distributed``).

``torchrun --nproc_per_node N -m hypermeta train CONFIG`` starts N processes; ``fit`` joins
them (``World.from_env``). Every rank draws the **whole** meta-batch with the same generator
(so each task is fixed by the step and its index in the meta-batch, whatever the world size)
and trains on its own contiguous share of ``meta_batch / N`` tasks; after the backward pass
one all-reduce averages the gradients of every trainable parameter (flattened into one
buffer), so N ranks take exactly the step one process would take on the whole meta-batch.
This is plain ``all_reduce`` rather than ``DistributedDataParallel``: DDP's reducer hooks the
autograd graph of the wrapped module's ``forward``, and MAML's inner loop differentiates
through ``autograd.grad`` (double backward), which DDP does not support. Validation tasks are
split across ranks and their per-task metrics gathered. Rank 0 alone writes checkpoints,
metrics and progress; the world size is recorded in the checkpoint and a resume with another
one is refused. Backend: NCCL when training on CUDA (``device``: each process takes the GPU
of its ``LOCAL_RANK``), else gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


def resolve_device(name: str = "auto") -> torch.device:
    """The device a training process uses: ``auto`` is CUDA when present, else the CPU; under
    ``torchrun`` a bare ``cuda`` (or ``auto``) is this process's ``cuda:LOCAL_RANK``, so N
    processes on an N-GPU machine take one GPU each. A CUDA device that is not there is an
    error that says so."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this torch build or machine has no CUDA; use "
                         "device=cpu (or auto)")
    if name in ("auto", "cuda"):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device} does not exist: this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``size == 1``: not distributed)."""

    rank: int = 0
    size: int = 1
    owned: bool = False  # this object joined the group, so ``close`` leaves it

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and reports progress."""
        return self.rank == 0

    @staticmethod
    def from_env(device: torch.device | None = None) -> World:
        """The current process group, joining the one ``torchrun`` describes (``WORLD_SIZE``,
        ``RANK``, ``MASTER_ADDR``...) on first use; ``World()`` outside ``torchrun``."""
        if dist.is_available() and dist.is_initialized():
            return World(dist.get_rank(), dist.get_world_size())
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1 or not dist.is_available():
            return World()
        on_cuda = device is not None and device.type == "cuda"
        if on_cuda:
            torch.cuda.set_device(device)  # NCCL's collectives run on this rank's GPU
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
        return World(dist.get_rank(), dist.get_world_size(), owned=True)

    def share(self, total: int) -> tuple[int, int]:
        """This rank's contiguous slice ``[start, stop)`` of ``total`` items (``total`` must
        divide by the world size)."""
        if total % self.size:
            raise ValueError(f"{total} is not divisible by the world size {self.size}")
        per = total // self.size
        return self.rank * per, (self.rank + 1) * per

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Average every parameter's gradient over the ranks, in one all-reduce (a parameter
        without a gradient on some rank counts as zero there)."""
        if self.size == 1 or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for p in params:
            count = p.numel()
            p.grad = flat[offset: offset + count].view_as(p).clone()
            offset += count

    def mean(self, value: Tensor) -> float:
        """The mean of a scalar over the ranks."""
        if self.size == 1:
            return float(value)
        total = value.detach().reshape(1).clone()
        dist.all_reduce(total)
        return float(total) / self.size

    def gather(self, values: Tensor) -> Tensor:
        """Concatenate each rank's 1-D ``values`` in rank order (sizes may differ)."""
        if self.size == 1:
            return values
        parts: list[Tensor | None] = [None] * self.size
        dist.all_gather_object(parts, values.cpu())  # (pickled: fine for either backend)
        return torch.cat([p for p in parts if p is not None])

    def broadcast(self, value: object) -> object:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group this object joined (a group the caller made stays): every
        rank waits for the others first, so none exits while a peer still talks to it."""
        if self.owned and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
