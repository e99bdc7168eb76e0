"""Train/val splits by episode and data-parallel sampling by rank.

Every rank of a DeepSpeed group loads the same (small) dataset; ``ShardSampler`` gives each rank a
disjoint, equal-size slice of one seeded permutation per epoch, so ranks step in lockstep (equal batch
counts) and never see the same sample within an epoch. Rank layout of an epoch (world = 2, 7 samples):

    perm  = [5 2 0 6 3 1 4]   (seed, epoch)     -> the tail beyond a multiple of world (4) is dropped
    rank0 = [5 0 3]   rank1 = [2 6 1]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def split_episodes(episodes: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded, deterministic (train, val) split of episode indices. A positive fraction keeps at least
    one validation episode; the training side always keeps at least one."""
    eps = sorted(int(e) for e in episodes)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not eps:
        raise ValueError("no episodes to split")
    n_val = 0 if val_fraction == 0 else min(len(eps) - 1, max(1, round(val_fraction * len(eps))))
    perm = np.random.default_rng(seed).permutation(len(eps))
    val = sorted(eps[i] for i in perm[:n_val])
    return sorted(set(eps) - set(val)), val


def shard_episodes(episodes: Sequence[int], rank: int, world: int) -> list[int]:
    """Episode-level shard (disjoint, covering; sizes differ by at most one episode)."""
    _check_rank(rank, world)
    return sorted(int(e) for e in episodes)[rank::world]


def _check_rank(rank: int, world: int) -> None:
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank} world={world}")


class ShardSampler(Sampler[int]):
    """Per epoch: a permutation seeded by (seed, epoch), cut to a multiple of ``world``, rank r takes
    positions r, r + world, ... Call ``set_epoch`` before each epoch (as with DistributedSampler)."""

    def __init__(self, num_samples: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True):
        _check_rank(rank, world)
        if num_samples < world:
            raise ValueError(f"{num_samples} samples cannot be split over {world} ranks")
        self.num_samples, self.rank, self.world = int(num_samples), int(rank), int(world)
        self.seed, self.shuffle, self.epoch = int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples // self.world

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.num_samples, generator=g)
        else:
            perm = torch.arange(self.num_samples)
        perm = perm[: len(self) * self.world]
        return iter(perm[self.rank :: self.world].tolist())


def iterate_batches(dataset, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0) -> Iterator:
    """Endless stream of batches (TensorDict, batch (batch_size,)) of this rank's shard, epoch after
    epoch; step-based learners take as many as they need. Needs ``dataset.get_batch(indices)``."""
    sampler = ShardSampler(len(dataset), rank, world, seed)
    if batch_size > len(sampler):
        raise ValueError(
            f"batch_size {batch_size} per rank exceeds the {len(sampler)} samples of a rank's shard "
            f"({len(dataset)} samples over {world} ranks)"
        )
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        idx = list(sampler)
        for i in range(math.floor(len(idx) / batch_size)):
            yield dataset.get_batch(idx[i * batch_size : (i + 1) * batch_size])
        epoch += 1
