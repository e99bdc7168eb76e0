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


@functools.cache
def sim_class(task: str) -> type:
    """The Meta-World env class of ``task`` with the mujoco-4 weld fix (a subclass; site-packages untouched)."""
    if task not in mw_env_dict.ALL_V3_ENVIRONMENTS:
        raise unknown_task_error(task, list(mw_env_dict.ALL_V3_ENVIRONMENTS))
    base = mw_env_dict.ALL_V3_ENVIRONMENTS[task]
    return type(f"{base.__name__}Vlaforge", (base,), {"reset_mocap_welds": reset_mocap_welds_mujoco4})


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
