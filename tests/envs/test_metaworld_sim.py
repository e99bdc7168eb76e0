"""Single Meta-World simulators (no batching): all 50 tasks on mujoco 4, seeding, image orientation."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.envs.instructions import ALL_TASKS
from vlaforge.envs.metaworld_sim import make_sim, reset_mocap_welds_mujoco4, seed_and_reset, sim_class
from vlaforge.envs.render import PlainRenderer

pytestmark = pytest.mark.slow


def test_all_50_tasks_build_reset_and_reseed_deterministically():
    import metaworld.env_dict as mw
    from metaworld.sawyer_xyz_env import SawyerMocapBase

    rng = np.random.default_rng(0)
    for task in ALL_TASKS:
        sim = make_sim(task)
        weld = sim.model.eq_data[0]
        assert weld.shape == (12,) and weld[10] == 5.0 and weld[11] == 0.0, task  # mujoco-4 layout
        first = seed_and_reset(sim, 7)
        assert first.shape == (39,) and np.abs(first[36:39]).sum() > 0, task  # goal observable
        for _ in range(3):
            sim.step(rng.uniform(-1, 1, 4).astype(np.float32))
        assert np.array_equal(seed_and_reset(sim, 7), first), task
        sim.close()
    # the fix lives in our subclass; Meta-World's own classes are untouched
    assert mw.ALL_V3_ENVIRONMENTS["reach-v3"].reset_mocap_welds is SawyerMocapBase.reset_mocap_welds
    assert sim_class("reach-v3").reset_mocap_welds is reset_mocap_welds_mujoco4


def _mean_height(seg: np.ndarray, geom_pos: np.ndarray, rows: slice) -> float:
    """Mean world coordinate (of the geom seen at each pixel) over image ``rows``; -1 = no geom."""
    s = seg[rows]
    return float(geom_pos[s[s >= 0]].mean())


@pytest.mark.parametrize("task", ["push-v3", "drawer-close-v3"])
def test_images_are_upright(task):
    """In an upright image, what is seen in the top rows sits higher in the world than what is seen in
    the bottom rows. Checked on geom-id (segmentation) images that go through the same orientation
    code as RGB: world z for the corner cameras (mounted upside down in Meta-World), world y (away
    from the robot base) for the top-down camera."""
    cams = ["corner", "corner2", "corner3", "corner4", "topview"]
    sim = make_sim(task)
    seed_and_reset(sim, 0)
    r = PlainRenderer([sim.model], [sim.data], cams, 48, segmentation=True)
    seg = r.render([sim.data], [0])[0]  # (V, H, W) geom ids
    r.close()
    top, bottom = slice(0, 16), slice(-16, None)
    for v, cam in enumerate(cams):
        pos = sim.data.geom_xpos[:, 1 if cam == "topview" else 2]
        upright = _mean_height(seg[v], pos, top) - _mean_height(seg[v], pos, bottom)
        rotated = _mean_height(seg[v][::-1, ::-1], pos, top) - _mean_height(seg[v][::-1, ::-1], pos, bottom)
        assert upright > 0.1 and rotated < -0.1, (cam, upright, rotated)
    sim.close()


def test_plain_rgb_matches_segmentation_layout():
    """RGB and segmentation come from one render path: sky pixels (no geom) are where the RGB image
    shows the skybox, i.e. the orientation of both agrees."""
    sim = make_sim("push-v3")
    seed_and_reset(sim, 0)
    rgb = PlainRenderer([sim.model], [sim.data], ["corner"], 48).render([sim.data], [0])[0, 0]
    seg = PlainRenderer([sim.model], [sim.data], ["corner"], 48, segmentation=True).render([sim.data], [0])[0, 0]
    sky = seg < 0
    assert 0.05 < sky.mean() < 0.95
    # the skybox is a uniform grey-ish background: low colour variance over sky pixels vs the rest
    assert rgb[sky].std(0).mean() < rgb[~sky].std(0).mean()
    # and the sky is in the upper half (upright corner camera)
    assert sky[:24].mean() > sky[24:].mean()
    sim.close()


def test_site_marker_geoms_leave_physics_unchanged(recipe_tasks):
    """The visual-only mirror geoms (the goal marker Warp can draw) change no physics bit, for every task the
    recipes use: same observations, rewards, qpos/qvel and contacts as Meta-World's own model over 100 steps."""
    import metaworld.env_dict as mw

    from vlaforge.envs.metaworld_sim import MARKER_PREFIX, place_site_markers

    rng = np.random.default_rng(0)
    for task in recipe_tasks:
        ours = make_sim(task)
        plain_cls = type("NoMarkers", (mw.ALL_V3_ENVIRONMENTS[task],), {"reset_mocap_welds": reset_mocap_welds_mujoco4})
        ref = plain_cls()  # the same settings as make_sim, on the scene as Meta-World compiles it
        ref._freeze_rand_vec, ref.seeded_rand_vec, ref._set_task_called = False, True, True
        if ref._partially_observable:
            ref._partially_observable = False
            del ref.sawyer_observation_space
        geoms, sites = ours._vlaforge_markers
        assert ours.model.ngeom == ref.model.ngeom + len(geoms) and ours.model.nbody == ref.model.nbody + 1, task
        assert (ours.model.geom_contype[geoms] == 0).all() and (ours.model.geom_conaffinity[geoms] == 0).all()
        assert ours.model.site("goal" if task != "button-press-topdown-v3" else "hole").id in sites, task
        assert all(ours.model.geom(g).name.startswith(MARKER_PREFIX) for g in geoms)
        assert np.array_equal(seed_and_reset(ours, 5), seed_and_reset(ref, 5)), task
        for _ in range(100):
            act = rng.uniform(-1, 1, 4)
            (o1, r1, *_), (o2, r2, *_) = ours.step(act), ref.step(act)
            place_site_markers(ours)  # as before every render: must not feed back into physics
            assert np.array_equal(o1, o2) and r1 == r2, task
        assert np.array_equal(ours.data.qpos, ref.data.qpos) and np.array_equal(ours.data.qvel, ref.data.qvel)
        assert ours.data.ncon == ref.data.ncon and np.array_equal(ours.model.body_mass[:-1], ref.model.body_mass)
        # the markers sit on their sites after placement
        assert np.allclose(ours.data.geom_xpos[geoms], ours.data.site_xpos[sites])
        ours.close()
        ref.close()
