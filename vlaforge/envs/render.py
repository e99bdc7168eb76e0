"""Batched camera rendering of B plain-MuJoCo simulators: the render stage of an env step.

Physics and rendering are separate stages: the env steps B simulators, then ONE call renders all of
them. Two backends share this interface (registry ``RENDER_BACKENDS``):
  "plain": one ``mujoco.Renderer`` per simulator (OpenGL via EGL; the reference path), and
  "warp":  MuJoCo-Warp's batched ray-tracing renderer fed with the B physics states (warp_render.py).

Speed settings (STACK.md, measured on Meta-World at 64 px): MSAA off (``offsamples = 0``, 2x), shadows
off (10-70x on software GL), reflections off. The skybox stays ON: it is Meta-World's background
(without it the walls behind the table render black) and Warp needs it to produce the same picture.

Orientation: Meta-World's corner cameras are mounted with their "up" axis pointing down (e.g. corner:
xyaxes="-1 1 0 -0.2 -0.2 -1"), so their images come out rotated 180 degrees. We rotate every camera
whose up axis has a negative world-z component; topview / behindGripper / gripperPOV stay as they are.

Sites: Warp draws geoms only, so the env compiles a visual-only mirror geom for every visible site (the
goal marker among them, metaworld_sim.py) and places it before each render; the plain renderer hides
sites (``sitegroup`` off) so that both backends draw exactly the same markers, as geoms.
"""

from __future__ import annotations

import difflib
from typing import Callable, Protocol, Sequence

import mujoco  # MUJOCO_GL (egl by default) is set in vlaforge/envs/__init__.py, before any mujoco import
import numpy as np


class BatchRenderer(Protocol):
    def render(self, datas: Sequence[mujoco.MjData], ids: Sequence[int]) -> np.ndarray:
        """uint8 (len(ids), V, H, W, 3): the cameras of simulators ``ids`` (``datas`` holds all B)."""
        ...

    def close(self) -> None: ...


def camera_ids(model: mujoco.MjModel, cameras: Sequence[str]) -> list[int]:
    """Camera ids of ``cameras``; a clear error (with the closest name) for an unknown one."""
    names = [model.camera(i).name for i in range(model.ncam)]
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"cameras must be distinct, got {list(cameras)}")
    ids = []
    for cam in cameras:
        if cam not in names:
            close = difflib.get_close_matches(cam, names, n=1, cutoff=0.0)
            raise ValueError(f"Unknown camera {cam!r} (closest: {close[0]!r}). This model has cameras {names}.")
        ids.append(names.index(cam))
    return ids


def camera_flips(data: mujoco.MjData, cam_ids: Sequence[int]) -> list[bool]:
    """True for cameras mounted upside down: their image y axis (cam_xmat column 1) points to world -z."""
    return [bool(data.cam_xmat[c].reshape(3, 3)[2, 1] < 0.0) for c in cam_ids]


def orient(image: np.ndarray, flip: bool) -> np.ndarray:
    """Rotate an (H, W, ...) image by 180 degrees if ``flip`` (a view, no copy)."""
    return image[::-1, ::-1] if flip else image


def fast_visual_settings(model: mujoco.MjModel, size: int) -> None:
    """Model-level render settings; call before creating a GL context on ``model``."""
    model.vis.quality.offsamples = 0  # MSAA off: 57 -> 125 frames/s at 64 px (STACK.md)
    model.vis.quality.shadowsize = 0  # shadows are off: do not allocate the 4096^2 shadow map
    # the offscreen buffer must hold the image (Meta-World's default is 640x480)
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), size)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), size)


class PlainRenderer:
    """One ``mujoco.Renderer`` per simulator (each on its own model: tasks may differ per slot)."""

    def __init__(
        self,
        models: Sequence[mujoco.MjModel],
        datas: Sequence[mujoco.MjData],
        cameras: Sequence[str],
        size: int,
        segmentation: bool = False,  # render geom ids instead of RGB (tests check orientation with it)
    ):
        self.size = size
        self.cameras = list(cameras)
        self.segmentation = segmentation
        self._cam_ids = [camera_ids(m, cameras) for m in models]
        self._flips = [camera_flips(d, ids) for d, ids in zip(datas, self._cam_ids)]
        self._renderers: list[mujoco.Renderer] = []
        self._option = mujoco.MjvOption()
        self._option.sitegroup[:] = 0  # sites are drawn by their mirror geoms (see the module docstring)
        for m in models:
            fast_visual_settings(m, size)
            r = mujoco.Renderer(m, size, size)
            flags = r.scene.flags  # scene flags persist across update_scene calls: set once
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 1
            if segmentation:
                r.enable_segmentation_rendering()
            self._renderers.append(r)

    def render(self, datas: Sequence[mujoco.MjData], ids: Sequence[int]) -> np.ndarray:
        v, s = len(self.cameras), self.size
        if self.segmentation:
            out = np.empty((len(ids), v, s, s), np.int32)  # geom id per pixel, -1 = no geom
        else:
            out = np.empty((len(ids), v, s, s, 3), np.uint8)
        for k, i in enumerate(ids):
            r = self._renderers[i]
            for j, (cam, flip) in enumerate(zip(self._cam_ids[i], self._flips[i])):
                r.update_scene(datas[i], camera=cam, scene_option=self._option)
                img = r.render()  # (H, W, 3) uint8, or (H, W, 2) [objid, objtype] with segmentation
                if self.segmentation:
                    img = np.where(img[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), img[..., 0], -1)
                out[k, j] = orient(img, flip)
        return out

    def close(self) -> None:
        for r in self._renderers:
            r.close()
        self._renderers = []


def _make_plain(models, datas, cameras, size) -> BatchRenderer:
    return PlainRenderer(models, datas, cameras, size)


def _make_warp(models, datas, cameras, size) -> BatchRenderer:
    from vlaforge.envs.warp_render import WarpRenderer  # lazy: importing warp costs ~1.5 s

    return WarpRenderer(models, datas, cameras, size)


# name -> factory(models, datas, cameras, size); EnvConfig.render_backend picks one.
RENDER_BACKENDS: dict[str, Callable[..., BatchRenderer]] = {"plain": _make_plain, "warp": _make_warp}


def make_renderer(backend: str, models, datas, cameras: Sequence[str], size: int) -> BatchRenderer:
    if backend not in RENDER_BACKENDS:
        raise ValueError(f"Unknown render backend {backend!r}: expected one of {sorted(RENDER_BACKENDS)}.")
    return RENDER_BACKENDS[backend](models, datas, cameras, size)
