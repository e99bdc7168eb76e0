"""ChunkDataset: (image, state, instruction) -> the next K actions, over a LeRobot v3 dataset folder.

The datasets here are small, so everything (video frames decoded once) lives in memory as tensors:
images uint8 (N, V, H, W, 3), states (N, S), actions (N, A). Sample t of an episode [s, e) gets
``ACTION_CHUNK`` = actions t .. t+K-1 with ``ACTION_PAD`` True where t+k >= e; padded positions repeat
the episode's last action. That is LeRobot's ``delta_timestamps={"action": [0, 1/fps, ...]}`` with its
``action_is_pad`` mask, so recipes can train on LeRobot's datasets and ours alike.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase
from torch.utils.data import Dataset

from vlaforge import keys
from vlaforge.data import format as F
from vlaforge.data.reader import DatasetReader
from vlaforge.data.stats import image_stats, numeric_stats

log = logging.getLogger(__name__)


class ChunkDataset(Dataset):
    """``episodes``: episode indices to keep (train/val splits); ``cameras``: camera names or full
    feature keys, in the order of the V axis (default: every camera of the dataset, info.json order);
    ``extra``: further features to return, {feature name: TensorDict key}, e.g.
    ``{"next.success": ("next", "success")}``; ``skip_bad_episodes``: drop the episodes of unreadable
    (truncated / corrupt) files, listed in ``bad_episodes``, instead of raising the reader's DataFileError."""

    def __init__(
        self,
        root: str | Path,
        chunk_size: int,
        episodes: Sequence[int] | None = None,
        cameras: Sequence[str] | None = None,
        state_key: str = F.STATE_KEY,
        action_key: str = F.ACTION_KEY,
        extra: Mapping[str, str | tuple[str, ...]] | None = None,
        skip_bad_episodes: bool = False,
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.reader = DatasetReader(root)
        self.root, self.chunk_size = self.reader.root, int(chunk_size)
        self.camera_keys = self._camera_keys(cameras)
        for k in (state_key, action_key, *(extra or {})):
            if k not in self.reader.features:
                raise KeyError(
                    f"{self.root}: feature {k!r} not in the dataset (features: {sorted(self.reader.features)})"
                )
        self.state_key, self.action_key, self.extra = state_key, action_key, dict(extra or {})
        data = self.reader.load(episodes, cameras=self.camera_keys, skip_bad=skip_bad_episodes)
        self.bad_episodes: dict[int, str] = dict(self.reader.bad_episodes)  # episode -> why it was skipped
        for ep, why in sorted(self.bad_episodes.items()):
            log.warning("skipping episode %d of %s: %s", ep, self.root, why)
        self.episodes = sorted({int(e) for e in data["episode_index"]})
        self.images = self._stack_cameras(data)  # uint8 (N, V, H, W, 3)
        self.state = torch.from_numpy(_as_2d(data[state_key]).astype(np.float32))  # (N, S)
        self.actions = torch.from_numpy(_as_2d(data[action_key]).astype(np.float32))  # (N, A)
        self.task_index = torch.from_numpy(data["task_index"].astype(np.int64))  # (N,)
        self.episode_index = torch.from_numpy(data["episode_index"].astype(np.int64))  # (N,)
        self.frame_index = torch.from_numpy(data["frame_index"].astype(np.int64))  # (N,)
        self.extras = {k: torch.from_numpy(np.asarray(data[k])) for k in self.extra}
        self.instructions: list[str] = list(self.reader.tasks)  # by task_index
        # Exclusive end row of each row's episode: rows are grouped by episode, ordered by index.
        ep = data["episode_index"]
        starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
        ends = np.r_[starts[1:], len(ep)]
        self.ep_end = torch.from_numpy(np.repeat(ends, ends - starts).astype(np.int64))  # (N,)
        for k in self.camera_keys:  # now held (stacked) in self.images
            data.pop(k)
        self._data = data
        self._stats: dict[str, dict[str, np.ndarray]] | None = None

    # -- construction helpers ---------------------------------------------------------------------
    def _camera_keys(self, cameras: Sequence[str] | None) -> list[str]:
        return self.reader.resolve_cameras(cameras)

    def _stack_cameras(self, data: dict[str, np.ndarray]) -> torch.Tensor:
        if not self.camera_keys:
            return torch.zeros((len(data["index"]), 0, 0, 0, 3), dtype=torch.uint8)
        shapes = {k: data[k].shape[1:] for k in self.camera_keys}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"{self.root}: cameras differ in size {shapes}; pick same-size cameras with cameras=[...]")
        return torch.from_numpy(np.stack([data[k] for k in self.camera_keys], axis=1))

    # -- torch Dataset ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, i: int) -> TensorDict:
        if not -len(self) <= int(i) < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        return self.get_batch([int(i) % len(self)])[0]

    def __getitems__(self, indices: Sequence[int]) -> TensorDict:
        # torch's DataLoader calls this with a whole batch of indices: one vectorised gather.
        return self.get_batch(indices)

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> TensorDict:
        """A TensorDict of batch (B,) with the keys listed in the module docstring."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)  # (B,)
        steps = idx[:, None] + torch.arange(self.chunk_size)  # (B, K) rows t .. t+K-1
        end = self.ep_end[idx][:, None]  # (B, 1)
        pad = steps >= end  # (B, K) past the episode end
        steps = torch.minimum(steps, end - 1)  # repeat the last action
        td = TensorDict(
            {
                keys.IMAGE: self.images[idx],  # (B, V, H, W, 3)
                keys.STATE: self.state[idx],  # (B, S)
                keys.ACTION_CHUNK: self.actions[steps],  # (B, K, A)
                keys.ACTION_PAD: pad,
                keys.TASK_INDEX: self.task_index[idx],
                keys.EPISODE_INDEX: self.episode_index[idx],
                keys.FRAME_INDEX: self.frame_index[idx],
                **{self.extra[k]: v[idx] for k, v in self.extras.items()},
            },
            batch_size=[len(idx)],
        )
        instructions = [self.instructions[t] for t in self.task_index[idx].tolist()]
        td.set(keys.INSTRUCTION, NonTensorStack.from_list(instructions))  # B strings
        return td

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """meta/stats.json (LeRobot layout, whole dataset); computed from the loaded rows if absent.
        When state/action live under other feature names, they are also aliased as
        "observation.state" / "action", the names the processor reads."""
        if self._stats is None:
            stats = dict(self.reader.stats or {})
            for k in (self.state_key, self.action_key):
                if k not in stats:
                    stats[k] = numeric_stats(_as_2d(self._data[k]))
            for v, k in enumerate(self.camera_keys):
                if k not in stats:
                    stats[k] = image_stats(self.images[:, v].numpy())
            stats.setdefault(F.STATE_KEY, stats[self.state_key])
            stats.setdefault(F.ACTION_KEY, stats[self.action_key])
            self._stats = stats
        return self._stats

    @property
    def fps(self) -> int:
        return self.reader.fps

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def episode_column(self, name: str) -> dict[int, Any]:
        """A per-episode column of the episodes table for the loaded episodes (e.g. ``env_task``)."""
        if name not in self.reader.episodes.columns:
            raise KeyError(f"{self.root}: episodes table has no column {name!r}")
        return {e: self.reader.episodes.loc[e, name] for e in self.episodes}


def _as_2d(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def collate(items: Sequence[TensorDictBase] | TensorDictBase) -> TensorDict:
    """Samples -> one TensorDict of batch (B,): tensors stacked, instructions as a NonTensorStack.
    A TensorDict that is already a batch (from ``__getitems__``) passes through."""
    if isinstance(items, TensorDictBase):
        return items
    if not items:
        raise ValueError("collate got an empty list")
    instr = [it.get(keys.INSTRUCTION) for it in items]
    instr = [s.data if hasattr(s, "data") else s for s in instr]
    tensors = [it.exclude(keys.INSTRUCTION) for it in items]
    out = torch.stack(tensors).to_tensordict()
    out.set(keys.INSTRUCTION, NonTensorStack.from_list(list(instr)))
    return out
