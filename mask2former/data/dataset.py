"""A map-style torch Dataset: dataset dicts + mapper, with a reproducible RNG per sample."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch.utils.data import Dataset


class MapDataset(Dataset):
    """`dataset[i]` = `mapper(dicts[i], rng)` with rng seeded by (seed, epoch, i).

    The augmentation of a sample therefore depends only on the seed, the epoch and its index, not
    on the number of workers or the order in which they ask. Index with an (epoch, i) pair (what
    `InfiniteSampler` yields) or call `set_epoch` between epochs.
    """

    def __init__(self, dicts: list[dict], mapper: Callable[[dict, np.random.Generator], dict], seed: int = 0) -> None:
        self.dicts = dicts
        self.mapper = mapper
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        rng = np.random.default_rng([self.seed, epoch, index])
        return self.mapper(self.dicts[index], rng)
