"""Sharding by rank: ``torchrun --nproc_per_node N -m eval run ...`` (or N processes with the same variables).

Each rank takes samples ``rank::WORLD_SIZE`` and appends to its own record file; a ``gloo`` barrier waits for
all ranks, then rank 0 merges the files and scores. Without RANK / WORLD_SIZE it is one plain process.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

log = logging.getLogger(__name__)


def rank_world() -> tuple[int, int]:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad RANK={rank} / WORLD_SIZE={world}")
    return rank, world


class Barrier:
    """A no-op for one process; a gloo process group (MASTER_ADDR / MASTER_PORT from torchrun) otherwise."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        if world > 1:
            if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
                raise ValueError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT (torchrun sets them)")
            import torch.distributed as dist

            if not dist.is_initialized():
                # inference can take hours; the barrier must not time out before the slowest rank is done
                dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(days=7))

    def wait(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
