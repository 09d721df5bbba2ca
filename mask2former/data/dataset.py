"""A map-style torch Dataset: dataset dicts + mapper, with a reproducible RNG per sample."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch.utils.data import Dataset

SAMPLE_SEED = "sample_seed"  # the key of the seed in a sample, which the model reads for its random points


def derived_seed(entropy: list[int], spawn_key: tuple[int, ...] = ()) -> int:
    """A seed < 2**63 made from whole numbers (numpy's SeedSequence): the same numbers, the same seed."""
    state = np.random.SeedSequence([int(number) for number in entropy], spawn_key=spawn_key)
    return int(state.generate_state(1, np.uint64)[0]) >> 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The sample's key for the model's random draws: a function of (seed, epoch, index) only, and a stream apart
    from the mapper's rng (same entropy, another spawn key)."""
    return derived_seed([seed, epoch, index], spawn_key=(1,))


class MapDataset(Dataset):
    """`dataset[i]` = `mapper(dicts[i], rng)` with rng seeded by (seed, epoch, i), plus SAMPLE_SEED.

    The augmentation of a sample therefore depends only on the seed, the epoch and its index, not
    on the number of workers or the order in which they ask; so does `sample["sample_seed"]`, from
    which the model seeds the random points of the sample's losses. Index with an (epoch, i) pair
    (what `InfiniteSampler` yields) or call `set_epoch` between epochs.
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
        sample = self.mapper(self.dicts[index], rng)
        sample[SAMPLE_SEED] = sample_seed(self.seed, epoch, index)
        return sample
