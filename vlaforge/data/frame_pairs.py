"""FramePairDataset: (o_t, o_{t+k}, instruction, task, [state]) over a LeRobot v3 dataset, actions never read.

The unlabeled-video side of latent actions (LAPA / LAPO): every source (a LeRobot dataset with its actions
ignored, a folder of mp4 files, action-free simulator rollouts) is a LeRobot v3 folder whose action column
may be absent or all NaN. Rows t of an episode [s, e) with t + gap < e are the samples; batches are
TensorDicts (``get_batch(indices)``, the interface ``learners/stream.ShardStream`` draws from):

    IMAGE           uint8 (B, V, H, W, 3)   o_t
    NEXT_IMAGE      uint8 (B, V, H, W, 3)   o_{t+gap}, same episode
    INSTRUCTION     B strings               the episode's task
    TASK_INDEX, EPISODE_INDEX, FRAME_INDEX  int64 (B,)
    STATE           float32 (B, S)          when the dataset has observation.state (S = 1 zeros otherwise)
    LATENT_CODES    int64 (B, N)            once ``set_codes`` attached them (latent pretraining)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.data import format as F
from vlaforge.data.reader import DatasetReader
from vlaforge.data.stats import image_stats, numeric_stats

log = logging.getLogger(__name__)


class FramePairDataset:
    """``gap``: k >= 1; ``episodes``: the episode indices to keep (splits); ``cameras``: camera names or feature
    keys in V order (default: all); ``skip_bad_episodes``: as ChunkDataset."""

    def __init__(self, root: str | Path, gap: int, episodes: Sequence[int] | None = None,
                 cameras: Sequence[str] | None = None, skip_bad_episodes: bool = False):
        if gap < 1:
            raise ValueError(f"frame pair gap must be >= 1, got {gap}")
        self.reader = DatasetReader(root)
        self.root, self.gap = self.reader.root, int(gap)
        self.camera_keys = self._camera_keys(cameras)
        if not self.camera_keys:
            raise ValueError(f"{self.root}: no camera feature (video or image): latent actions are learned from frames")
        data = self.reader.load(episodes, cameras=self.camera_keys, skip_bad=skip_bad_episodes)
        # Proof by construction that nothing downstream can read actions: every action column is dropped here,
        # whatever it holds (absent, all NaN, or real labels hidden from the latent model).
        for k in [k for k in data if k == F.ACTION_KEY or k.startswith(F.ACTION_KEY + ".")]:
            del data[k]
        self.bad_episodes: dict[int, str] = dict(self.reader.bad_episodes)
        self.images = torch.from_numpy(np.stack([data[k] for k in self.camera_keys], axis=1))  # (R, V, H, W, 3)
        self.has_state = F.STATE_KEY in data
        state = data[F.STATE_KEY].reshape(len(data["index"]), -1) if self.has_state else np.zeros((len(data["index"]), 1))
        self.state = torch.from_numpy(state.astype(np.float32))  # (R, S)
        self.task_index = torch.from_numpy(data["task_index"].astype(np.int64))
        self.episode_index = torch.from_numpy(data["episode_index"].astype(np.int64))
        self.frame_index = torch.from_numpy(data["frame_index"].astype(np.int64))
        self.instructions: list[str] = list(self.reader.tasks)
        ep = data["episode_index"]
        starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
        ends = np.r_[starts[1:], len(ep)]
        rows = [np.arange(s, e - self.gap) for s, e in zip(starts, ends) if e - s > self.gap]
        self.rows = torch.from_numpy(np.concatenate(rows) if rows else np.zeros(0, np.int64)).long()  # (N,) o_t rows
        if len(self.rows) == 0:
            raise ValueError(f"{self.root}: no episode is longer than latent.gap = {self.gap} frames: no frame pairs")
        self.episodes = sorted({int(e) for e in ep})
        self.codes: torch.Tensor | None = None  # (N, num_codes) after set_codes
        self._state_rows = state

    def _camera_keys(self, cameras: Sequence[str] | None) -> list[str]:
        available = self.reader.camera_keys
        if cameras is None:
            return list(available)
        out = []
        for c in cameras:
            key = c if c in available else F.IMAGE_PREFIX + c
            if key not in available:
                raise KeyError(f"{self.root}: camera {c!r} not in the dataset (cameras: {available})")
            out.append(key)
        return out

    def __len__(self) -> int:
        return len(self.rows)

    def set_codes(self, codes: torch.Tensor) -> None:
        """Attach the latent action of every pair (N, num_codes), e.g. labelled once by a trained LAM."""
        if codes.ndim != 2 or len(codes) != len(self):
            raise ValueError(f"codes must be (N={len(self)}, num_codes), got {tuple(codes.shape)}")
        self.codes = codes.long()

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> TensorDict:
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)  # (B,) pair indices
        r = self.rows[idx]
        td = TensorDict({
            keys.IMAGE: self.images[r],
            keys.NEXT_IMAGE: self.images[r + self.gap],
            keys.STATE: self.state[r],
            keys.TASK_INDEX: self.task_index[r],
            keys.EPISODE_INDEX: self.episode_index[r],
            keys.FRAME_INDEX: self.frame_index[r],
        }, batch_size=[len(idx)])
        if self.codes is not None:
            td.set(keys.LATENT_CODES, self.codes[idx])
        td.set(keys.INSTRUCTION, NonTensorStack.from_list([self.instructions[t] for t in self.task_index[r].tolist()]))
        return td

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """The dataset's state / image statistics (meta/stats.json when present), no action entry."""
        stats = {k: v for k, v in (self.reader.stats or {}).items() if not k.startswith(F.ACTION_KEY)}
        if not self.has_state or F.STATE_KEY not in stats:
            stats[F.STATE_KEY] = numeric_stats(self._state_rows)
        for v, k in enumerate(self.camera_keys):
            if k not in stats:
                stats[k] = image_stats(self.images[:, v].numpy())
        return stats
