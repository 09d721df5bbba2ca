"""An endless, resumable, rank-sharded training sampler."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class InfiniteSampler(Sampler):
    """Yields (epoch, index) forever: a fresh permutation per epoch, seeded by (seed, epoch).

    The global stream of samples is fixed by the seed; rank r of w takes positions r, r + w, ...
    starting at global position `start`, so a run resumed at iteration k with `start` = k x global
    batch sees exactly the samples the uninterrupted run would have seen.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.start = start
        self.rank = rank
        self.world_size = world_size

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + self.rank
        epoch, permutation = -1, []
        while True:
            current = position // self.size
            if current != epoch:
                epoch, permutation = current, self._permutation(current)
            yield epoch, permutation[position % self.size]
            position += self.world_size
