"""Data parallel on CPU (torchrun, gloo) and the seeding that makes a step reproducible.

The modules are NOT wrapped in DistributedDataParallel: DDP's reducer hooks fire on
``loss.backward()`` only, never on ``torch.autograd.grad``, which the hypergradients need. Every
gradient that reaches an optimiser is averaged over ranks with :func:`all_reduce_mean` (what DDP
does), parameters are broadcast from rank 0 at start (:func:`broadcast_module`), batch-norm
buffers are averaged before evaluation and checkpointing (:func:`average_buffers`), and each
rank draws different batches (:func:`batch_indices`). Rank 0 alone logs, evaluates and saves.

Determinism and exact resume: every step reseeds torch / numpy / random from (seed, step, rank)
(:func:`seed_step`) and draws its batch indices from per-epoch permutations seeded the same
way, so step t is a pure function of the state after step t-1.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """gloo process group when launched by torchrun (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def all_reduce_mean(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Average the tensors over ranks, in place (one flat all_reduce)."""
    if info.world <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def broadcast_module(module: nn.Module, info: DistInfo) -> None:
    if info.world <= 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def average_buffers(module: nn.Module, info: DistInfo) -> None:
    floats = [b.data for b in module.buffers() if b.is_floating_point()]
    all_reduce_mean(floats, info)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------
# Seeding and batches
# ------------------------------------------------------------------------------------------


def seed_for(*parts: int) -> int:
    """A 31-bit seed mixed from integers (stable across runs and platforms)."""
    value = 0x9E3779B1
    for part in parts:
        value = (value * 1_000_003 + int(part) + 0x7F4A7C15) % (2**61 - 1)
    return value % (2**31 - 1)


def batch_indices(
    length: int, batch: int, seed: int, stream: int, step: int, info: DistInfo
) -> list[int]:
    """Indices of this rank's batch at ``step`` for one data stream: a pure function of its
    arguments (per-epoch permutations), so a resumed run draws exactly the same batches.

    Positions ``(step * world + rank) * batch + j`` walk the permutations, so within an epoch
    the ranks' batches are disjoint."""
    if length <= 0:
        raise ValueError("empty data set")
    out = []
    cache: dict[int, torch.Tensor] = {}
    for j in range(batch):
        position = (step * info.world + info.rank) * batch + j
        epoch, offset = divmod(position, length)
        if epoch not in cache:
            generator = torch.Generator().manual_seed(seed_for(seed, stream, epoch))
            cache[epoch] = torch.randperm(length, generator=generator)
        out.append(int(cache[epoch][offset]))
    return out


def seed_step(seed: int, step: int, rank: int) -> None:
    value = seed_for(seed, step, rank, 17)
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
