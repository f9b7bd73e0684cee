"""Data-parallel teacher training under torchrun: the process group, each
rank's shard of the training set, and rank 0 answering for all.

torch's own launcher starts the processes (`torchrun --nproc_per_node=N
pretrain.py ...`) and sets RANK, LOCAL_RANK and WORLD_SIZE in each. A plain
`python pretrain.py` has none of them: it runs as one process, starts no
group, and nothing here changes what it computes.
"""
import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from utils.run import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place among those torchrun started."""
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, evaluates and writes files."""
        return self.rank == 0


@contextlib.contextmanager
def process_group(device: torch.device):
    """Join torchrun's process group for the duration (NCCL on CUDA, gloo on
    the CPU) and yield this process's Ranks. Outside torchrun, or with one
    process, no group is started and Ranks() is yielded."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Ranks()
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), world)
    finally:
        dist.destroy_process_group()


def derived_seed(*keys: int) -> int:
    """A 64-bit seed from non-negative integers: different keys give unrelated
    seeds (numpy's SeedSequence), unlike seed + epoch, where seed 1 epoch 2
    would be seed 2 epoch 1."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


def shard_indices(n: int, rank: int, world: int, epoch: int, seed: int) -> torch.Tensor:
    """This rank's sample indices for `epoch`, as torch's DistributedSampler
    deals them: a permutation of range(n) that every rank draws alike from
    (seed, epoch), dealt out in turn. The n % world samples left at its end
    sit the epoch out (others each epoch), so the shards are disjoint and
    equally long, and every rank takes the same number of steps.
    -> (n // world,) int64 on the CPU."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))
    return order[:n - n % world][rank::world]


def data_parallel(model: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """DistributedDataParallel around `model` under torchrun: rank 0's weights
    and buffers are copied to every rank, and each backward pass averages the
    gradients over the ranks. BatchNorm statistics stay per rank (no
    SyncBatchNorm: gloo has none), as in torch's ImageNet example. With one
    process, the model itself."""
    if ranks.world == 1:
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def mean_over_ranks(value: float, ranks: Ranks, device: torch.device) -> float:
    """The mean of one number over all ranks (the number itself with one process)."""
    if ranks.world == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / ranks.world


def agreed(ranks: Ranks, decide):
    """decide() on rank 0 alone, its result handed to every rank. A UserError
    it raises is raised on every rank, so a refusal stops them all alike
    instead of leaving the others waiting for rank 0 forever."""
    if ranks.world == 1:
        return decide()
    answer = [None, None]
    if ranks.main:
        try:
            answer[0] = decide()
        except UserError as err:
            answer[1] = str(err)
    dist.broadcast_object_list(answer, src=0)
    if answer[1] is not None:
        raise UserError(answer[1])
    return answer[0]
