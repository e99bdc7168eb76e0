"""MuJoCo-Warp batched rendering against the plain mujoco.Renderer, for every Meta-World task the shipped
recipes use (first kernel compile ~40 s per machine, then cached under WARP_CACHE_PATH)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge import keys
from vlaforge.envs import EnvConfig, make_env
from vlaforge.envs.metaworld_sim import refresh_poses

pytestmark = pytest.mark.slow

MAX_MAD = 8.0  # mean abs difference bound per task image, in 0..255 (issue 11)
# The site that marks each task's goal (Meta-World's _target_pos); "goal" unless listed.
GOAL_SITE = {"button-press-topdown-v3": "hole"}
# Tasks whose goal lies INSIDE scene geometry, hidden from the corner camera at every image size (checked
# up to 224 px): the closed drawer's handle inside the cabinet, the pressed button's hole, the hole in
# peg-insert's box. Their marker is drawn and occluded on BOTH paths; every other task must show it.
GOAL_OCCLUDED = {"drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3"}


def _images(env) -> np.ndarray:
    return env.render().numpy().astype(np.int16)  # (B, V, H, W, 3)


def _marker_pixels(env, tasks) -> np.ndarray:
    """(B, V, H, W) bool: pixels that change when each slot's goal site (and so its marker) moves 5 m down."""
    before = _images(env)
    for sim, task in zip(env.sims, tasks):
        sim.model.site(GOAL_SITE.get(task, "goal")).pos[2] -= 5.0
        refresh_poses(sim)
    changed = np.abs(_images(env) - before).max(-1) > 30
    for sim, task in zip(env.sims, tasks):
        sim.model.site(GOAL_SITE.get(task, "goal")).pos[2] += 5.0
        refresh_poses(sim)
    return changed


def test_warp_matches_plain_per_recipe_task_with_the_goal_marker(recipe_tasks):
    tasks = recipe_tasks
    assert {"reach-v3", "button-press-topdown-v3"} <= set(tasks) and len(tasks) >= 10  # MT10 is a recipe's
    slots = tasks + tasks[:1]  # a repeated task: one Warp context renders 2 worlds of that group
    cfg = dict(image_size=64, cameras=["corner"], max_episode_steps=20)
    plain = make_env(EnvConfig(**cfg, render_backend="plain"), slots, seed=0)
    warp = make_env(EnvConfig(**cfg, render_backend="warp"), slots, seed=0)
    try:
        seeds = list(range(1, len(slots) + 1))
        a, b = plain.reset(seeds=seeds), warp.reset(seeds=seeds)
        g = torch.Generator().manual_seed(0)
        mads = []
        for t in range(4):  # reset, then after moving: Warp reads every step's physics state
            ia, ib = a[keys.IMAGE].numpy().astype(np.int16), b[keys.IMAGE].numpy().astype(np.int16)
            assert ib.shape == (len(slots), 1, 64, 64, 3) and b[keys.IMAGE].dtype == torch.uint8
            assert torch.equal(a[keys.PRIVILEGED], b[keys.PRIVILEGED])  # same physics
            mads.append(np.abs(ia - ib).mean(axis=(1, 2, 3, 4)))  # (B,)
            act = torch.rand(len(slots), 4, generator=g) * 2 - 1
            a, b = plain.step(act)[keys.NEXT], warp.step(act)[keys.NEXT]
        mad = np.max(mads, axis=0)
        assert (mad <= MAX_MAD).all(), dict(zip(slots, mad.round(2)))
        # each world of a task group shows its own simulator (slots 0 and -1: same task, different seeds)
        j = len(tasks)
        assert np.abs(ia[0] - ib[j]).mean() > mads[-1][0] and np.abs(ia[j] - ib[0]).mean() > mads[-1][j]
        # the goal marker: the same pixels on both paths, present for every task whose goal is in view
        mp, mw = _marker_pixels(plain, slots), _marker_pixels(warp, slots)
        for i, task in enumerate(slots):
            n_plain, n_warp, both = int(mp[i].sum()), int(mw[i].sum()), int((mp[i] & mw[i]).sum())
            if task in GOAL_OCCLUDED:
                assert n_plain == n_warp == 0, (task, n_plain, n_warp)
            else:
                assert n_plain >= 1 and n_warp >= 1 and both >= min(n_plain, n_warp) / 2, (task, n_plain, n_warp)
    finally:
        plain.close()
        warp.close()


def test_warp_deferred_and_partial_renders():
    cfg = EnvConfig(image_size=32, cameras=["corner", "topview"], max_episode_steps=10, render_backend="warp")
    warp = make_env(cfg, ["push-v3", "reach-v3", "push-v3"], seed=0)
    try:
        b = warp.reset(seeds=[1, 2, 3])
        assert b[keys.IMAGE].shape == (3, 2, 32, 32, 3)
        # a partial reset re-renders the reset slot only, with the same image as a full render
        b2 = warp.reset(env_ids=[1], seeds=[7])
        assert torch.equal(b2[keys.IMAGE][[0, 2]], b[keys.IMAGE][[0, 2]])
        assert not torch.equal(b2[keys.IMAGE][1], b[keys.IMAGE][1])
        assert torch.equal(warp.render(), b2[keys.IMAGE])
        # deferred: steps without rendering keep the old images; render(ids) draws those slots only
        warp.step(torch.zeros(3, 4) + 0.5, render=False)
        assert torch.equal(warp.render([2, 0]), warp.render()[[2, 0]])
        assert not torch.equal(warp.render()[0], b2[keys.IMAGE][0])  # the hand moved
    finally:
        warp.close()
