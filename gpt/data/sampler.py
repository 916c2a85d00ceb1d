"""The order in which a training run visits its examples: shuffled per epoch, split over processes, resumable."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """A shuffled pass over ``n`` windows, split over processes, that a resumed run can pick up in the middle.

    Epoch ``e`` visits ``randperm(n)`` drawn from ``seed + e`` (its own generator: the global RNG is untouched),
    so any epoch's order can be rebuilt from two integers. Process ``r`` of ``N`` takes positions r, r + N, ... of
    the (padded) permutation, so the N per-process batches of step k together are exactly batch k of one process
    with N times the batch: a DDP run follows the single-process run step by step. ``resume(epoch, skip)`` makes
    the next pass over ``epoch`` start after its first ``skip`` indices, those the interrupted run had trained on.
    A DistributedSampler, so Lightning uses it as it is under DDP instead of wrapping it in another.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.n = n
        self._skip = (0, 0)  # (epoch, indices to skip in it)

    def resume(self, epoch: int, skip: int) -> None:
        self.epoch, self._skip = epoch, (epoch, skip)

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)  # the full pass, also when resuming: Lightning counts from its state

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g)
        order = torch.cat([order, order[: len(self) * self.num_replicas - self.n]])  # every process gets len(self)
        mine = order[self.rank :: self.num_replicas]
        skip_epoch, skip = self._skip
        if skip_epoch == self.epoch:
            mine, self._skip = mine[skip:], (0, 0)
        return _ints(mine)


def _ints(order: torch.Tensor, block: int = 1 << 16) -> Iterator[int]:
    """The indices as Python ints, a block at a time: a list of them all would cost ~36 bytes per window (a
    billion-token corpus has millions of windows), the tensor costs 8."""
    for part in order.split(block):
        yield from part.tolist()
