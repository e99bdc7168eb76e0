"""MuJoCo-Warp batched rendering against the plain mujoco.Renderer (first kernel compile ~40 s, then cached)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge import keys
from vlaforge.envs import EnvConfig, make_env

pytestmark = pytest.mark.slow


def test_warp_images_match_plain_renderer():
    cfg = dict(image_size=64, cameras=["corner"], max_episode_steps=10)
    tasks = ["push-v3"] * 3
    plain = make_env(EnvConfig(**cfg), tasks, seed=0)
    warp = make_env(EnvConfig(**cfg, render_backend="warp"), tasks, seed=0)
    try:
        a, b = plain.reset(seeds=[1, 2, 3]), warp.reset(seeds=[1, 2, 3])
        act = torch.rand(3, 4) * 2 - 1
        for _ in range(3):  # also after moving: Warp reads the physics states of every step
            a, b = plain.step(act)[keys.NEXT], warp.step(act)[keys.NEXT]
        assert torch.equal(a[keys.PRIVILEGED], b[keys.PRIVILEGED])  # same physics
        ia, ib = a[keys.IMAGE].numpy().astype(np.int16), b[keys.IMAGE].numpy().astype(np.int16)
        assert b[keys.IMAGE].shape == (3, 1, 64, 64, 3) and b[keys.IMAGE].dtype == torch.uint8
        mad = np.abs(ia - ib).mean(axis=(1, 2, 3, 4))  # (B,) per simulator, in 0..255
        assert (mad < 15).all(), mad
        # each world shows its own simulator: images of different worlds differ more than warp vs plain
        # of the same world would if the worlds were mixed up
        swapped = np.abs(ia[0] - ib[1]).mean()
        assert swapped > mad[0]
        # a partial reset re-renders the reset world only, with the same image as a full render
        b2 = warp.reset(env_ids=[1], seeds=[7])
        assert torch.equal(b2[keys.IMAGE][[0, 2]], b[keys.IMAGE][[0, 2]])
        assert torch.equal(warp.render(), b2[keys.IMAGE])
    finally:
        plain.close()
        warp.close()
