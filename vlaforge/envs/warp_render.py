"""MuJoCo-Warp batched rendering of B plain-MuJoCo physics states (the "warp" render backend).

Warp is used for RENDERING only: physics stays in plain MuJoCo (67k mj_step/s on one core vs 183-9.9k
Warp world-steps/s on CPU, STACK.md); each frame we copy the six pose fields the ray tracer reads
(geom_xpos, geom_xmat, cam_xpos, cam_xmat, light_xpos, light_xdir) of all B simulators into Warp's
(nworld=B) data, refit the BVH and render all worlds in one call. On this CPU that is ~3.3x the best
plain ``mujoco.Renderer`` at 64 px; on a GPU the same call runs there.

One Warp model serves all worlds, so all B simulators must share one MuJoCo model (one task). Per-reset
model edits Meta-World makes (body_pos of drawers, doors, ...) do not matter: we copy world poses.
Known differences to the plain renderer (STACK.md): Warp draws no sites (Meta-World's green goal marker
is absent) and no anti-aliasing; mean abs difference ~5-6/255 otherwise.

Kernels compile once (~40 s cold) into WARP_CACHE_PATH; later processes load them in ~1 s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import mujoco
import numpy as np

from vlaforge.envs.render import camera_flips, camera_ids, orient

# Same default as vlaforge.runtime.process.process_env (envs must not import the platform layer):
# a stable kernel cache so every process and Ray actor reuses the ~40 s compile.
os.environ.setdefault(
    "WARP_CACHE_PATH",
    str(Path(os.environ.get("VLAFORGE_CACHE", "~/.cache/vlaforge")).expanduser() / "warp"),
)

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
    )


class WarpRenderer:
    def __init__(
        self,
        models: Sequence[mujoco.MjModel],
        datas: Sequence[mujoco.MjData],
        cameras: Sequence[str],
        size: int,
        device: str | None = None,  # None: "cuda:0" when available, else "cpu"
    ):
        model = models[0]
        if not all(m is model or _same_model(model, m) for m in models[1:]):
            raise ValueError(
                "render_backend='warp' needs all simulators of one env to share one model (the same task): "
                "one Warp model serves all worlds. Use one task per env (e.g. one rollout actor per task) "
                "or render_backend='plain' for mixed-task envs."
            )
        self.size = size
        self.cameras = list(cameras)
        self.nworld = len(models)
        cam_ids = camera_ids(model, cameras)
        self._flips = camera_flips(datas[0], cam_ids)
        wp.init()
        self.device = device or ("cuda:0" if wp.is_cuda_available() else "cpu")
        with wp.ScopedDevice(self.device):
            self._m = mjw.put_model(model)
            self._d = mjw.make_data(model, nworld=self.nworld)
            # Settings that reproduce the plain image (STACK.md); without the skybox the background is black.
            self._rc = mjw.create_render_context(
                model,
                nworld=self.nworld,
                cam_res=(size, size),
                render_rgb=True,
                render_depth=False,
                cam_active=list(cameras),  # rgb_adr[v] follows this order
                use_shadows=False,
                use_textures=True,
                render_skybox=True,
            )
        self._rgb_adr = self._rc.rgb_adr.numpy()  # (V,) offset of camera v's pixels in a world's row
        # Host staging buffers, one per pose field: (B, n, k) float32, filled from the B MjData.
        self._staging = {f: np.zeros((self.nworld, *getattr(datas[0], f).shape), np.float32) for f in POSE_FIELDS}

    def render(self, datas: Sequence[mujoco.MjData], ids: Sequence[int]) -> np.ndarray:
        if len(datas) != self.nworld:
            raise ValueError(f"WarpRenderer was built for {self.nworld} worlds, got {len(datas)} MjData.")
        for f, buf in self._staging.items():
            for w, d in enumerate(datas):
                buf[w] = getattr(d, f)
            getattr(self._d, f).assign(buf)  # (B, n, 3|9) -> Warp's (B, n) vec3 / mat33
        with wp.ScopedDevice(self.device):
            mjw.refit_bvh(self._m, self._d, self._rc)
            mjw.render(self._m, self._d, self._rc)
            packed = self._rc.rgb_data.numpy()  # (B, sum of V*H*W) uint32, 0xAARRGGBB
        s = self.size
        out = np.empty((len(ids), len(self.cameras), s, s, 3), np.uint8)
        rows = packed[np.asarray(ids, dtype=np.int64)]
        for v, (adr, flip) in enumerate(zip(self._rgb_adr, self._flips)):
            # little-endian bytes of 0xAARRGGBB are B, G, R, A: reverse the first three for RGB
            bgra = rows[:, adr : adr + s * s].view(np.uint8).reshape(len(ids), s, s, 4)
            for k in range(len(ids)):
                out[k, v] = orient(bgra[k, :, :, 2::-1], flip)
        return out

    def close(self) -> None:
        self._rc = self._d = self._m = None
