"""One Meta-World v3 simulator, built the way vlaforge needs it (no gym wrappers).

- Unwrapped env classes: the MT1 gym wrapper calls ``set_task()`` on every reset, which re-freezes the
  goal to one of 50 pre-sampled tasks and ignores ``reset(seed=...)`` (STACK.md). Instead: random
  goals and object poses per reset (``_freeze_rand_vec = False``), drawn from the env's own seeded
  generator (``seeded_rand_vec = True``): ``seed_and_reset(sim, s)`` gives the same initial state
  for the same ``s`` every time.
- Goal observable: obs[36:39] holds the goal position (Meta-World's MT benchmarks do the same).
- mujoco 4.0.0: ``SawyerMocapBase.reset_mocap_welds`` writes 11 values into ``model.eq_data[i]``,
  which has 12 columns since mujoco 4 (column 11 = "compute the weld pose automatically" flag). Our
  subclass writes the 11 values into columns 0-10 and 0 ("explicit pose") into column 11.
- Site markers drawn as geoms: MuJoCo-Warp's ray tracer draws geoms only, so the goal marker (the
  ``goal`` site; button-press's ``hole``) and every other visible site would be missing from its images.
  Our subclass compiles the scene with one visual-only MIRROR geom per visible site (same shape, size,
  colour), all on one extra static body appended after every existing body, so no existing body, geom,
  joint or DoF index moves: contype = conaffinity = 0 (never in a contact), mass 0 on a body welded to
  the world (no inertia anywhere). ``place_site_markers`` puts each mirror at its site's world pose
  before a render (sites move with their bodies, and reset_model() moves the goal site), and the plain
  renderer hides sites (scene option sitegroup off), so both renderers draw exactly the same markers.
  Physics is bit-for-bit unchanged (tests/envs/test_metaworld_sim.py steps both models side by side).
"""

from __future__ import annotations

import functools
from typing import Any

import mujoco
import numpy as np

import metaworld.env_dict as mw_env_dict
from vlaforge.envs.instructions import unknown_task_error

# Meta-World's weld parameters: anchor (3), relative pose (3 + 4 quat), torque scale.
_WELD_DATA = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0])


def reset_mocap_welds_mujoco4(self: Any) -> None:
    """Meta-World's reset_mocap_welds, fixed for mujoco >= 4's 12-column eq_data."""
    model = self.model
    if model.nmocap > 0 and model.eq_data is not None:
        for i in range(model.eq_data.shape[0]):
            if model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                model.eq_data[i, : _WELD_DATA.size] = _WELD_DATA
                model.eq_data[i, _WELD_DATA.size :] = 0.0  # explicit weld pose, not auto-computed


MARKER_BODY = "vlaforge_site_markers"  # the static body holding the mirror geoms
MARKER_PREFIX = "vlaforge_marker/"  # mirror geom name = prefix + site name
VISIBLE_SITE_GROUPS = (0, 1, 2)  # MuJoCo's default mjvOption.sitegroup shows groups 0-2


def add_site_markers(spec: mujoco.MjSpec) -> None:
    """Add one visual-only mirror geom per visible site (alpha > 0, a default-visible group) of ``spec``."""
    model = spec.compile()  # resolved site sizes / colours (defaults and classes applied)
    sites = [
        i
        for i in range(model.nsite)
        if model.site_rgba[i, 3] > 0 and model.site_group[i] in VISIBLE_SITE_GROUPS
    ]
    body = spec.worldbody.add_body(name=MARKER_BODY)  # no joint: welded to the world, never moves physically
    for i in sites:
        site = model.site(i)
        body.add_geom(
            name=MARKER_PREFIX + site.name,
            type=mujoco.mjtGeom(int(model.site_type[i])),
            size=model.site_size[i].copy(),
            rgba=model.site_rgba[i].copy(),
            group=int(model.site_group[i]),
            contype=0,
            conaffinity=0,  # never collides, never enters the constraint solver
            mass=0.0,  # and adds no mass (the body is static anyway)
        )


def marker_map(model: mujoco.MjModel) -> tuple[np.ndarray, np.ndarray]:
    """(mirror geom ids, their site ids), int arrays of equal length: which geom mirrors which site."""
    geoms, sites = [], []
    for g in range(model.ngeom):
        name = model.geom(g).name
        if name.startswith(MARKER_PREFIX):
            geoms.append(g)
            sites.append(model.site(name[len(MARKER_PREFIX) :]).id)
    return np.asarray(geoms, np.int64), np.asarray(sites, np.int64)


def place_site_markers(sim) -> None:
    """Put every mirror geom at its site's current world pose (read by both renderers, never by physics).

    mj_kinematics re-places the static mirrors at the origin on every step, so this runs before each
    render; it writes data.geom_xpos/xmat of the mirror geoms only."""
    geoms, sites = sim._vlaforge_markers
    if geoms.size:
        sim.data.geom_xpos[geoms] = sim.data.site_xpos[sites]
        sim.data.geom_xmat[geoms] = sim.data.site_xmat[sites]


def _initialize_simulation_with_markers(self: Any) -> tuple[mujoco.MjModel, mujoco.MjData]:
    """gymnasium's MujocoEnv._initialize_simulation, compiling the scene with the site mirror geoms."""
    spec = mujoco.MjSpec.from_file(self.fullpath)
    add_site_markers(spec)
    model = spec.compile()
    model.vis.global_.offwidth = self.width  # as gymnasium does: MjrContext copies these
    model.vis.global_.offheight = self.height
    self._vlaforge_markers = marker_map(model)
    return model, mujoco.MjData(model)


@functools.cache
def sim_class(task: str) -> type:
    """The Meta-World env class of ``task`` with the mujoco-4 weld fix (a subclass; site-packages untouched)."""
    if task not in mw_env_dict.ALL_V3_ENVIRONMENTS:
        raise unknown_task_error(task, list(mw_env_dict.ALL_V3_ENVIRONMENTS))
    base = mw_env_dict.ALL_V3_ENVIRONMENTS[task]
    methods = {"reset_mocap_welds": reset_mocap_welds_mujoco4, "_initialize_simulation": _initialize_simulation_with_markers}
    return type(f"{base.__name__}Vlaforge", (base,), methods)


def make_sim(task: str):
    """A fresh, unwrapped Meta-World simulator of ``task``: seeded random goals, goal in the observation."""
    sim = sim_class(task)()
    sim._freeze_rand_vec = False  # new goal + object poses every reset ...
    sim.seeded_rand_vec = True  # ... drawn from sim.np_random, which seed_and_reset() seeds
    sim._set_task_called = True  # step() asserts set_task() ran; we deliberately skip set_task()
    if sim._partially_observable:  # goal xyz into obs[36:39]; the cached obs bounds depend on it
        sim._partially_observable = False
        del sim.sawyer_observation_space
    return sim


def seed_and_reset(sim, seed: int) -> np.ndarray:
    """Reset ``sim`` to the initial state of ``seed``: float64 (39,) observation.

    Meta-World's reset calls ``reset_model`` twice (before and after ``mj_resetData``); both draw from
    ``sim.np_random``, so reseeding right before makes the result depend on ``seed`` alone.
    """
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"Reset seeds must be non-negative integers, got {seed}.")
    sim.seed(int(seed))
    obs, _ = sim.reset()
    refresh_poses(sim)
    return obs


def refresh_poses(sim) -> None:
    """Recompute the world poses the renderers read (geom/cam/light xpos, xmat) from qpos.

    Some reset_model()s edit model.body_pos after their last mj_forward. Kinematics only, not a full
    mj_forward: that would also overwrite the solver warm start and so alter the next physics step.
    """
    mujoco.mj_kinematics(sim.model, sim.data)
    mujoco.mj_comPos(sim.model, sim.data)
    mujoco.mj_camlight(sim.model, sim.data)


def control_fps(sim) -> int:
    """Env steps per simulated second (Meta-World: 0.0025 s timestep x 5 frames = 80 Hz)."""
    return int(round(1.0 / (sim.model.opt.timestep * sim.frame_skip)))
