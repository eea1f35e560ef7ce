"""Samplers for ImageFolder-style datasets: a resumable per-epoch shuffle, and augmentation
seeded per sample so that a resumed or re-sharded run sees the same images."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class EpochSampler(Sampler[int]):
    """Deterministic per-epoch shuffle, split across ranks, resumable mid-epoch.

    Epoch e uses the permutation seeded by (seed, e), so every rank and every restart agrees;
    rank r takes every world_size-th index; `set_epoch(e, start)` skips the first `start`
    samples of this rank's share (those already trained on before an interruption).
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True,
                 keyed: bool = False):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.keyed = keyed  # yield (epoch, index) keys for `SeededSamples`
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.size % self.world_size:
            # Equal shares for every rank (as DistributedSampler): repeat a few samples.
            order += order[: self.world_size - self.size % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        indices = self._indices()[self.start :]
        return iter([(self.epoch, i) for i in indices] if self.keyed else indices)

    def __len__(self) -> int:
        share = (math.ceil(self.size / self.world_size) if self.pad
                 else len(range(self.rank, self.size, self.world_size)))
        return max(share - self.start, 0)


class SeededSamples(Dataset):
    """Augmentation as a pure function of (seed, epoch, index).

    Each sample is transformed under RNGs (torch, python, numpy) seeded from its key, so the random crop and flip of
    an image do not depend on which worker, rank or restart produced it: a run resumed mid-epoch,
    or spread over another number of processes, sees exactly the same augmented images.
    The caller's RNG states are restored afterwards (with 0 workers that is the training process).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # classes, samples, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        epoch, index = key
        sample_seed = (self.seed * 1_000_003 + epoch) * 100_000_007 + index
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2**32)  # timm's RandAugment draws its ops from numpy
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
