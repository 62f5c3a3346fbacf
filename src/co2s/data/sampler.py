"""An endless, resumable, rank-sharded stream of ``(index, seed)`` pairs for iteration-based training.

Each epoch is a permutation seeded from ``(seed, epoch)``; every drawn sample gets its own
augmentation seed derived from its global position. The stream is a pure function of
``(seed, position)``, so a run resumed at step ``s`` sees exactly what an uninterrupted run saw,
whatever the number of data-loader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start  # position in this rank's stream (samples already consumed)
        self.per_rank = math.ceil(size / world_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.size, generator=g)
        pad = self.per_rank * self.world_size - self.size
        if pad:  # repeat the head so every rank draws the same count (as DistributedSampler does)
            perm = torch.cat([perm, perm[:pad]])
        return perm[self.rank :: self.world_size]

    def sample_seed(self, position: int) -> int:
        return (self.seed * 2_654_435_761 + position * self.world_size + self.rank) % (2**62)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        position = self.start
        while True:
            perm = self.permutation(epoch)
            for i in range(offset, self.per_rank):
                yield int(perm[i]), self.sample_seed(position)
                position += 1
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # one epoch; the stream itself never ends
        return self.per_rank
