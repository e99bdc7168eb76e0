"""MuJoCo-Warp batched rendering of B plain-MuJoCo physics states (the "warp" render backend).

Warp is used for RENDERING only: physics stays in plain MuJoCo (67k mj_step/s on one core vs 183-9.9k
Warp world-steps/s on CPU, STACK.md); each frame we copy the six pose fields the ray tracer reads
(geom_xpos, geom_xmat, cam_xpos, cam_xmat, light_xpos, light_xdir) of all B simulators into Warp's
(nworld=B) data, refit the BVH and render all worlds in one call. On this CPU that is ~3.3x the best
plain ``mujoco.Renderer`` at 64 px; on a GPU the same call runs there.

One Warp model serves the worlds of one scene, so the B simulators are split into TASK GROUPS (slots whose
models are the same scene) and each group gets its own batched render context (nworld = its size); a
render call renders every group that holds a requested slot. Measured alternatives (bench/envs.py,
README): one context per group vs one context per simulator (nworld = 1). Per-reset model edits
Meta-World makes (body_pos of drawers, doors, ...) do not matter: we copy world poses.
Warp draws no sites: the env draws them as mirror geoms (metaworld_sim.py), so the goal marker is
there. No anti-aliasing; mean abs difference to the plain renderer within 8/255 per task (tests).

Kernels compile once per machine into WARP_CACHE_PATH (a render kernel per scene variant, a few seconds
each; a fresh process building a 3-task env: 14 s with an empty cache, 4 s with the filled one, measured
under load, bench/envs.py warp_start).
"""

from __future__ import annotations

import os
from typing import Sequence

import mujoco
import numpy as np

from vlaforge.envs.render import camera_flips, camera_ids, orient
from vlaforge.runtime.process import process_env

# The stable kernel cache every process and Ray actor shares (runtime/process.py sets it for all of them;
# this covers a process that imports the envs directly, e.g. a script or a test).
os.environ.setdefault("WARP_CACHE_PATH", process_env()["WARP_CACHE_PATH"])

import mujoco_warp as mjw  # noqa: E402
import warp as wp  # noqa: E402

wp.config.log_level = wp.LOG_WARNING  # no init banner / module-load lines in every actor's log

# The fields of mjData the renderer reads (world poses of geoms, cameras, lights), in both libraries.
POSE_FIELDS = ("geom_xpos", "geom_xmat", "cam_xpos", "cam_xmat", "light_xpos", "light_xdir")


def _same_model(a: mujoco.MjModel, b: mujoco.MjModel) -> bool:
    """Same scene for Warp's purposes: same geoms (types, sizes, meshes, colours), cameras and lights."""
    sizes = ("ngeom", "ncam", "nlight", "nmesh", "nmat", "ntex")
    if any(getattr(a, n) != getattr(b, n) for n in sizes):
        return False
    return bool(
        np.array_equal(a.geom_type, b.geom_type)
        and np.array_equal(a.geom_dataid, b.geom_dataid)
        and np.array_equal(a.geom_matid, b.geom_matid)
        and np.allclose(a.geom_size, b.geom_size)
        and np.allclose(a.geom_rgba, b.geom_rgba)
        and np.array_equal(a.mesh_vertnum, b.mesh_vertnum)
        and np.allclose(a.mat_rgba, b.mat_rgba)
    )


class _WarpScene:
    """One batched render context over ``nworld`` simulators that share one scene (one task)."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, nworld: int, cameras: Sequence[str],
                 size: int, device: str):
        self.size, self.nworld, self.device = size, nworld, device
        self._flips = camera_flips(data, camera_ids(model, cameras))
        with wp.ScopedDevice(device):
            self._m = mjw.put_model(model)
            self._d = mjw.make_data(model, nworld=nworld)
            # Settings that reproduce the plain image (STACK.md); without the skybox the background is black.
            self._rc = mjw.create_render_context(
                model,
                nworld=nworld,
                cam_res=(size, size),
                render_rgb=True,
                render_depth=False,
                cam_active=list(cameras),  # rgb_adr[v] follows this order
                use_shadows=False,
                use_textures=True,
                render_skybox=True,
            )
        self._rgb_adr = self._rc.rgb_adr.numpy()  # (V,) offset of camera v's pixels in a world's row
        # Host staging buffers, one per pose field: (nworld, n, k) float32, filled from the MjData.
        self._staging = {f: np.zeros((nworld, *getattr(data, f).shape), np.float32) for f in POSE_FIELDS}

    def render(self, datas: Sequence[mujoco.MjData], rows: Sequence[int], out: np.ndarray) -> None:
        """Render all worlds (``datas`` = this scene's nworld MjData); write worlds ``rows`` into ``out``
        (len(rows), V, H, W, 3) uint8."""
        for f, buf in self._staging.items():
            for w, d in enumerate(datas):
                buf[w] = getattr(d, f)
            getattr(self._d, f).assign(buf)  # (nworld, n, 3|9) -> Warp's (nworld, n) vec3 / mat33
        with wp.ScopedDevice(self.device):
            mjw.refit_bvh(self._m, self._d, self._rc)
            mjw.render(self._m, self._d, self._rc)
            packed = self._rc.rgb_data.numpy()  # (nworld, sum of V*H*W) uint32, 0xAARRGGBB
        s = self.size
        sel = packed[np.asarray(rows, dtype=np.int64)]
        for v, (adr, flip) in enumerate(zip(self._rgb_adr, self._flips)):
            # little-endian bytes of 0xAARRGGBB are B, G, R, A: reverse the first three for RGB
            bgra = sel[:, adr : adr + s * s].view(np.uint8).reshape(len(rows), s, s, 4)
            for k in range(len(rows)):
                out[k, v] = orient(bgra[k, :, :, 2::-1], flip)

    def close(self) -> None:
        self._rc = self._d = self._m = None


def task_groups(models: Sequence[mujoco.MjModel]) -> list[list[int]]:
    """Slot indices grouped by scene: slots whose models draw the same (``_same_model``) share a group,
    in order of first appearance."""
    groups: list[list[int]] = []
    for i, m in enumerate(models):
        for g in groups:
            ref = models[g[0]]
            if m is ref or _same_model(ref, m):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


class WarpRenderer:
    """B simulators of one or more tasks: one batched Warp render context per task group.

    ``per_world=True`` gives every simulator its own context (nworld = 1) instead: the measured
    alternative (bench/envs.py); slower, kept for that comparison."""

    def __init__(
        self,
        models: Sequence[mujoco.MjModel],
        datas: Sequence[mujoco.MjData],
        cameras: Sequence[str],
        size: int,
        device: str | None = None,  # None: "cuda:0" when available, else "cpu"
        per_world: bool = False,
    ):
        self.size = size
        self.cameras = list(cameras)
        self.nworld = len(models)
        camera_ids(models[0], cameras)  # a clear error for an unknown camera before Warp builds anything
        wp.init()
        self.device = device or ("cuda:0" if wp.is_cuda_available() else "cpu")
        self.groups = [[i] for i in range(len(models))] if per_world else task_groups(models)
        self._scenes = [_WarpScene(models[g[0]], datas[g[0]], len(g), cameras, size, self.device) for g in self.groups]
        # slot -> (group index, row in that group)
        self._where = {i: (k, r) for k, g in enumerate(self.groups) for r, i in enumerate(g)}

    def render(self, datas: Sequence[mujoco.MjData], ids: Sequence[int]) -> np.ndarray:
        if len(datas) != self.nworld:
            raise ValueError(f"WarpRenderer was built for {self.nworld} worlds, got {len(datas)} MjData.")
        ids = [int(i) for i in ids]
        s = self.size
        out = np.empty((len(ids), len(self.cameras), s, s, 3), np.uint8)
        for k, (group, scene) in enumerate(zip(self.groups, self._scenes)):
            want = [(j, self._where[i][1]) for j, i in enumerate(ids) if self._where[i][0] == k]
            if not want:  # deferred rendering: groups without a requested slot are not rendered
                continue
            part = np.empty((len(want), len(self.cameras), s, s, 3), np.uint8)
            scene.render([datas[i] for i in group], [r for _, r in want], part)
            out[[j for j, _ in want]] = part
        return out

    def close(self) -> None:
        for scene in self._scenes:
            scene.close()
        self._scenes = []
