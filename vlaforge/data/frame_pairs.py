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
    LAM_ACTIONS     float32 (B, A)          only with ``actions=True`` (LAOM's labelled pairs): the mean of the
                                            actions t .. t+gap-1, each dim min-max scaled to [-1, 1]
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
    keys in V order (default: all); ``skip_bad_episodes``: as ChunkDataset; ``actions``: read the action column
    (LAOM's small labelled set ONLY: the video the latent model learns from is opened without it)."""

    def __init__(self, root: str | Path, gap: int, episodes: Sequence[int] | None = None,
                 cameras: Sequence[str] | None = None, skip_bad_episodes: bool = False, actions: bool = False):
        if gap < 1:
            raise ValueError(f"frame pair gap must be >= 1, got {gap}")
        self.reader = DatasetReader(root)
        self.root, self.gap = self.reader.root, int(gap)
        self.camera_keys = self.reader.resolve_cameras(cameras)
        if not self.camera_keys:
            raise ValueError(f"{self.root}: no camera feature (video or image): latent actions are learned from frames")
        data = self.reader.load(episodes, cameras=self.camera_keys, skip_bad=skip_bad_episodes)
        self.actions = _pair_actions(data, self.gap, self.root) if actions else None  # (R, A) or None
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
        starts, ends = _bounds(ep)
        rows = [np.arange(s, e - self.gap) for s, e in zip(starts, ends) if e - s > self.gap]
        self.rows = torch.from_numpy(np.concatenate(rows) if rows else np.zeros(0, np.int64)).long()  # (N,) o_t rows
        if len(self.rows) == 0:
            raise ValueError(f"{self.root}: no episode is longer than latent.gap = {self.gap} frames: no frame pairs")
        self.episodes = sorted({int(e) for e in ep})
        self.codes: torch.Tensor | None = None  # (N, num_codes) after set_codes
        self._state_rows = state

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
        if self.actions is not None:
            td.set(keys.LAM_ACTIONS, self.actions[r])
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


def _pair_actions(data: dict[str, np.ndarray], gap: int, root: Path) -> torch.Tensor:
    """(R, A): for each row t, the mean of the actions t .. t+gap-1 of its episode, every dim min-max scaled to
    [-1, 1] over the dataset (rows within gap of the episode end average what is left; they start no pair)."""
    if F.ACTION_KEY not in data:
        raise ValueError(f"{root}: no {F.ACTION_KEY!r} column: LAOM's labelled pairs need actions")
    a = data[F.ACTION_KEY].reshape(len(data[F.ACTION_KEY]), -1).astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{root}: the {F.ACTION_KEY!r} column holds NaN/inf: not a labelled dataset")
    lo, hi = a.min(0), a.max(0)
    a = 2 * (a - lo) / np.maximum(hi - lo, 1e-6) - 1
    csum = np.concatenate([np.zeros((1, a.shape[1])), np.cumsum(a, 0)])  # prefix sums over rows
    starts, ends = _bounds(data["episode_index"])
    end = np.repeat(ends, ends - starts)  # exclusive end row of each row's episode
    t = np.arange(len(a))
    stop = np.minimum(t + gap, end)
    return torch.from_numpy(((csum[stop] - csum[t]) / (stop - t)[:, None]).astype(np.float32))


def _bounds(ep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) rows of the episodes of a row-ordered episode_index column."""
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    return starts, np.r_[starts[1:], len(ep)]
