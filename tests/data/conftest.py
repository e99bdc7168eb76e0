"""Synthetic episodes for the format / dataset tests (no simulator): smooth images with a moving
square, so video compression behaves as on rendered scenes, and distinct per-frame values.

Tests run in importlib mode (they cannot import this file): the helpers are exposed as the ``synth``
fixture (a namespace of the module-level names below)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from vlaforge.data import format as F
from vlaforge.data.writer import DatasetWriter

CAM = F.IMAGE_PREFIX + "corner"
CAM2 = F.IMAGE_PREFIX + "top"


def features(size: int = 32, cameras: tuple[str, ...] = (CAM,)) -> dict:
    out = {c: F.video_feature(size, size) for c in cameras}
    out.update({
        F.STATE_KEY: F.vector_feature("float32", 7),
        F.PRIVILEGED_KEY: F.vector_feature("float32", 39),
        F.ACTION_KEY: F.vector_feature("float32", 4, ["x", "y", "z", "gripper"]),
        F.REWARD_KEY: F.scalar_feature("float32"),
        F.SUCCESS_KEY: F.scalar_feature("bool"),
        F.DONE_KEY: F.scalar_feature("bool"),
    })
    return out


def episode(ep: int, length: int, size: int = 32, cameras: tuple[str, ...] = (CAM,)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(ep)
    yy, xx = np.mgrid[0:size, 0:size]
    frames = {}
    for v, cam in enumerate(cameras):
        img = np.zeros((length, size, size, 3), np.uint8)
        for t in range(length):
            img[t, ..., 0] = 40 + 3 * xx + v * 20
            img[t, ..., 1] = 60 + 2 * yy + ep * 10
            img[t, ..., 2] = 120
            y0 = (t * 2) % (size - 8)
            img[t, y0 : y0 + 8, 4:12] = (230, 230, 40)  # a moving square
        frames[cam] = img
    success = np.zeros(length, bool)
    success[-1] = True
    frames.update({
        # action value encodes (episode, frame) so chunk tests can check exactly which rows they got
        F.ACTION_KEY: np.stack([np.full(4, ep * 1000 + t, np.float32) for t in range(length)]),
        F.STATE_KEY: rng.normal(size=(length, 7)).astype(np.float32),
        F.PRIVILEGED_KEY: rng.normal(size=(length, 39)).astype(np.float32),
        F.REWARD_KEY: rng.random(length).astype(np.float32),
        F.SUCCESS_KEY: success,
        F.DONE_KEY: success.copy(),
    })
    return frames


LENGTHS = (12, 5, 9, 3)
TASKS = ("reach the goal", "close the drawer", "reach the goal", "push the button")


def write_dataset(root: Path, lengths=LENGTHS, codec: str = "h264", **kw) -> list[dict[str, np.ndarray]]:
    eps = [episode(i, n) for i, n in enumerate(lengths)]
    with DatasetWriter(root, fps=20, features=features(), robot_type="sawyer", codec=codec,
                       episode_columns={"env_task": pa.string()}, **kw) as w:
        for i, ep in enumerate(eps):
            w.add_episode(ep, task=TASKS[i % len(TASKS)], env_task=f"task-{i % 3}")
    return eps


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("ds") / "small"
    return root, write_dataset(root)


@pytest.fixture(scope="session")
def synth() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        CAM=CAM, CAM2=CAM2, LENGTHS=LENGTHS, TASKS=TASKS, features=features, episode=episode,
        write_dataset=write_dataset, path=Path(__file__),
    )
