"""Several processes sharing one extraction (``torchrun``): shards, reductions, gathers.

A :class:`Ranks` says where this process stands: rank ``rank`` of ``world``. The single-process
default ``Ranks()`` (rank 0 of 1) makes every method a no-op, so library code takes an optional
``ranks`` and runs unchanged without ``torch.distributed``.

Shards are whole batches: the rows of a set are cut into batches of ``batch_size`` (as a single
process does) and each rank takes a contiguous block of batches (:meth:`Ranks.batch_shard`). Every
per-sample array is then computed on exactly the batches a single process would use, and the
blocks joined in rank order give the single process's row order. Sums over samples (whitening
moments, randomized-SVD products, class means) are reduced across ranks; their summation order
differs from one process's, so they agree with it to float rounding, not bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Ranks:
    """This process's rank in a group of ``world`` processes (``local_rank``: on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world > 1

    def batch_shard(self, n: int, batch_size: int) -> np.ndarray:
        """Positions (sorted) of this rank's rows among ``n``: a contiguous block of whole batches
        of ``batch_size`` (``np.array_split`` of the batch indices over the ranks)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n_batches = -(-int(n) // int(batch_size))
        mine = np.array_split(np.arange(n_batches), self.world)[self.rank]
        if len(mine) == 0:
            return np.zeros(0, np.int64)
        return np.arange(mine[0] * batch_size, min((mine[-1] + 1) * batch_size, n), dtype=np.int64)

    def barrier(self) -> None:
        if self.is_distributed:
            torch.distributed.barrier()

    def all_reduce_sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place; returns it."""
        if self.is_distributed:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def all_gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (its own number of rows) joined along dim 0 in rank order."""
        if not self.is_distributed:
            return t
        n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
        counts = [torch.zeros_like(n) for _ in range(self.world)]
        torch.distributed.all_gather(counts, n)
        sizes = [int(c.item()) for c in counts]
        padded = t.new_zeros((max(sizes), *t.shape[1:]))
        padded[: t.shape[0]] = t
        out = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(out, padded.contiguous())
        return torch.cat([o[:s] for o, s in zip(out, sizes)])

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``t`` (same shape on all ranks), in rank order."""
        if not self.is_distributed:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(out, t.contiguous())
        return out

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.is_distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def init_ranks(device_type: str) -> Ranks:
    """The process group of a ``torchrun`` launch (env ``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on
    the CPU; a plain launch gives the single-process ``Ranks()``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend=backend)
    return Ranks(rank, world, local)


def shutdown(ranks: Ranks) -> None:
    """Leave the process group (after a last barrier); a no-op for a single process."""
    if ranks.is_distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
