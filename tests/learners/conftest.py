"""A tiny LeRobot v3 dataset for learner tests, written once per session with the data layer's writer.

The action is a fixed function of the state and the instruction (plus a colour cue in the image), so BC
has something learnable: its loss must fall within a few steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlaforge.data import format as F
from vlaforge.data.writer import DatasetWriter

STATE_DIM, ACTION_DIM, SIZE = 4, 3, 32
TASKS = ("push the red block", "reach the green goal")


def write_tiny_dataset(root: Path, episodes: int = 6, length: int = 16, seed: int = 0, **writer_kw) -> Path:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(STATE_DIM, ACTION_DIM)).astype(np.float32)
    features = {
        F.IMAGE_PREFIX + "main": F.video_feature(SIZE, SIZE),
        F.STATE_KEY: F.vector_feature("float32", STATE_DIM),
        F.ACTION_KEY: F.vector_feature("float32", ACTION_DIM),
    }
    with DatasetWriter(root, fps=10, features=features, robot_type="tiny", **writer_kw) as writer:
        for ep in range(episodes):
            task = ep % len(TASKS)
            state = rng.normal(size=(length, STATE_DIM)).astype(np.float32).cumsum(0) * 0.3
            action = np.tanh(state @ w + (0.5 if task else -0.5)).astype(np.float32)
            img = np.zeros((length, SIZE, SIZE, 3), np.uint8)
            img[..., task] = 180  # the task's colour
            img[:, 8:16, 8:16] = 255
            writer.add_episode({F.IMAGE_PREFIX + "main": img, F.STATE_KEY: state, F.ACTION_KEY: action}, task=TASKS[task])
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_dataset_per_file(tmp_path_factory) -> Path:
    """The same kind of data with every episode in its own parquet and mp4 file (for damaged-file tests)."""
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "per-file", data_file_mb=1e-6, video_file_mb=1e-6)
