"""FramePairs: (frame t, frame t + k) of one episode from a LeRobot v3 folder, reading NO action column.

The visual_ssl stage's data (learners/visual_ssl.py): any dataset of the unlabeled sources (data/unlabeled.py)
works, with or without an action column, with all-NaN actions too -- only the cameras, ``episode_index`` and
``frame_index`` are used. Positive offsets k are drawn uniformly from [-max_offset, max_offset] \\ {0} and
clipped into the episode (so a 1-frame episode pairs a frame with itself: it still trains, weakly).

``cameras`` fixes the V axis (the policy's cameras, from the labelled dataset): a dataset without one of them,
or with other frame sizes, is an error that names the dataset, the camera and the recipe key to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tensordict import TensorDict

from vlaforge import keys
from vlaforge.data.reader import DatasetReader
from vlaforge.errors import VlaforgeError


class FramePairs:
    def __init__(self, root: str | Path, cameras: Sequence[str], image_hw: tuple[int, int], max_offset: int,
                 skip_bad_episodes: bool = False):
        if max_offset < 1:
            raise ValueError(f"max_offset must be >= 1, got {max_offset}")
        self.reader = DatasetReader(root)
        self.root, self.max_offset = self.reader.root, int(max_offset)
        missing = [c for c in cameras if c not in self.reader.camera_keys]
        if missing:
            raise VlaforgeError(
                f"{self.root}: the unlabeled video has cameras {self.reader.camera_keys}, the policy needs {missing} "
                "(the labelled data's cameras): record the same camera (data.video.camera for mp4 folders)")
        data = self.reader.load(cameras=list(cameras), skip_bad=skip_bad_episodes)
        self.bad_episodes = dict(self.reader.bad_episodes)
        self.images = torch.from_numpy(np.stack([data[c] for c in cameras], axis=1))  # uint8 (N, V, H, W, 3)
        if tuple(self.images.shape[2:4]) != tuple(image_hw):
            raise VlaforgeError(
                f"{self.root}: video frames are {tuple(self.images.shape[2:4])}, the policy's images "
                f"{tuple(image_hw)}: set data.video.image_size (mp4) or envs.image_size to match")
        ep = data["episode_index"]  # rows grouped by episode, ordered by index
        starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
        ends = np.r_[starts[1:], len(ep)]
        self.ep_start = torch.from_numpy(np.repeat(starts, ends - starts).astype(np.int64))  # (N,)
        self.ep_end = torch.from_numpy(np.repeat(ends, ends - starts).astype(np.int64))  # (N,) exclusive
        self.episode_index = torch.from_numpy(ep.astype(np.int64))
        self.num_episodes = len(starts)

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> TensorDict:
        """TensorDict (B,): IMAGE, IMAGE_PAIR uint8 (B, V, H, W, 3), FRAME_OFFSET, EPISODE_INDEX."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)  # (B,)
        k = torch.randint(1, self.max_offset + 1, idx.shape) * (torch.randint(0, 2, idx.shape) * 2 - 1)  # (B,) +-
        pair = torch.minimum(torch.maximum(idx + k, self.ep_start[idx]), self.ep_end[idx] - 1)  # in the episode
        return TensorDict({
            keys.IMAGE: self.images[idx],
            keys.IMAGE_PAIR: self.images[pair],
            keys.FRAME_OFFSET: pair - idx,
            keys.EPISODE_INDEX: self.episode_index[idx],
        }, batch_size=[len(idx)])
