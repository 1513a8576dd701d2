"""Data-parallel training under ``torchrun``: DistributedDataParallel, gloo on the CPU.

``torchrun --nproc_per_node N -m lstm_stream train CONFIG.toml`` starts N copies
of the same command; each finds its rank in the environment torchrun sets
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...). Every rank builds the same
global batch (same seed, same order) and trains on its shard of it, rows
``rank::world``; DDP averages the gradients, so the update is the one a single
process makes on the whole batch (``loop.train_batch`` scales the loss for
that). Only rank 0 writes checkpoints, metrics and the exported model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

log = logging.getLogger(__name__)


@dataclass
class Distributed:
    """This process's place in the job: rank, world size, whether it writes files."""

    rank: int = 0
    world: int = 1
    active: bool = False  # a process group was initialised

    @classmethod
    def single(cls) -> Distributed:
        return cls()

    @classmethod
    def from_environment(cls) -> Distributed:
        """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        # nccl where every rank has a GPU; this project trains on the CPU, so gloo.
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend=backend)
        rank = torch_dist.get_rank()
        log.info("distributed: rank %d of %d (%s)", rank, world, backend)
        return cls(rank=rank, world=world, active=True)

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DDP around ``module`` when distributed (it broadcasts rank 0's weights)."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (for reporting the training loss)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch_dist.all_reduce(t)
        return float(t.item()) / self.world

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def close(self) -> None:
        if self.active:
            torch_dist.destroy_process_group()
            self.active = False
