"""An endless, resumable stream of one rank's micro-batches over a map-style dataset.

Epoch e is the data layer's ``ShardSampler`` order (one permutation seeded by (seed, e), rank r takes every
world-th sample), cut to a multiple of the micro batch, so EVERY rank runs the same number of steps per
epoch (an uneven count would leave one rank waiting in the gradient all-reduce forever). The position
``(epoch, offset)`` -- offset in batches -- is the whole state: a checkpoint stores it, resume rebuilds the
permutation and skips ``offset`` batches, so the continued run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from vlaforge.data.sampler import ShardSampler


class ShardStream:
    def __init__(
        self,
        num_samples: int,
        get_batch: Callable[[Sequence[int]], Any],
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool = True,
    ):
        per_rank = num_samples // world_size
        if per_rank < batch_size:
            raise ValueError(
                f"dataset has {num_samples} samples: {world_size} ranks x micro batch {batch_size} needs at least "
                f"{world_size * batch_size}; lower train.batch_size or add data"
            )
        self.num_samples, self.get_batch, self.batch_size = num_samples, get_batch, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.sampler = ShardSampler(num_samples, rank, world_size, seed=seed, shuffle=shuffle)
        self.batches_per_epoch = len(self.sampler) // batch_size
        self.epoch, self.offset = 0, 0
        self._indices = self._epoch_indices(0)

    def _epoch_indices(self, epoch: int) -> torch.Tensor:
        self.sampler.set_epoch(epoch)  # own torch.Generator: independent of the global RNG
        mine = torch.tensor(list(self.sampler), dtype=torch.int64)  # (N // world,)
        return mine[: self.batches_per_epoch * self.batch_size]

    def next(self) -> Any:
        if self.offset >= self.batches_per_epoch:  # epoch done: reshuffle with the next epoch's seed
            self.epoch, self.offset = self.epoch + 1, 0
            self._indices = self._epoch_indices(self.epoch)
        lo = self.offset * self.batch_size
        self.offset += 1
        return self.get_batch(self._indices[lo : lo + self.batch_size])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "num_samples": self.num_samples,
                "batch_size": self.batch_size, "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for k in ("num_samples", "batch_size", "world_size"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(
                    f"data position was saved with {k}={state[k]}, this run has {getattr(self, k)}: the same dataset, "
                    "batch size and number of learners are needed to resume the sample order exactly"
                )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._indices = self._epoch_indices(self.epoch)
