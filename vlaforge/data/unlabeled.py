"""Unlabeled video sources (issue 7): every source ends as a LeRobot v3 folder that no stage reads actions from.

    data.video.source   what it is                                   -> the dataset the stages read
    "lerobot"           any LeRobot v3 dataset (path)                   that folder; action columns ignored
    "mp4"               a folder of *.mp4 + an instructions file        converted into <cache_dir>/<hash>
    "rollouts"          simulator rollouts of data.video.rollouts.policy generate_demos(..., drop_actions)

The mp4 instructions file is a YAML (or JSON) mapping ``{file name: instruction}`` covering every mp4 of the
folder, e.g. ``push_000.mp4: push the puck to the goal``. Conversion reuses the dataset writer (atomic: a
temp folder renamed into place) and the cache's per-entry lock (two runs converting the same folder share one
build); the hash covers the files' names, sizes and mtimes, the instructions and the conversion settings.
Every user mistake (unreadable video, missing / extra instructions, too short or mismatched videos) is a
``VlaforgeError`` naming the file and what to change.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vlaforge.data import format as F
from vlaforge.data.cache import build_once
from vlaforge.data.config import VideoConfig
from vlaforge.errors import VlaforgeError

log = logging.getLogger(__name__)

MP4_FORMAT_VERSION = 1  # bump when the conversion changes (busts every mp4 cache entry)


class VideoSourceError(VlaforgeError, ValueError):
    """An unlabeled video source the user must fix (the message names the file)."""


def unlabeled_dataset(video: VideoConfig, envs=None, timeout_s: float = 900.0) -> Path:
    """The LeRobot v3 folder of the recipe's unlabeled video (absolute). ``envs`` (EnvConfig): the simulator
    of the "rollouts" source. Ray must be initialised for "rollouts" when the dataset is not cached yet."""
    if video.source == "lerobot":
        path = Path(video.path).expanduser().resolve()
        if not (path / F.INFO_PATH).is_file():
            raise VideoSourceError(f"data.video.path: {path} is not a LeRobot v3 dataset (no {F.INFO_PATH})")
        return path
    if video.source == "mp4":
        return convert_mp4_folder(video)
    from vlaforge.data.demos import generate_demos

    if envs is None:
        raise ValueError("unlabeled_dataset: the 'rollouts' source needs the recipe's envs config")
    return Path(generate_demos(envs, video.rollouts, timeout_s=timeout_s)).resolve()


# -- mp4 folder -> LeRobot v3 ------------------------------------------------------------------------------
def read_instructions(video: VideoConfig, videos: list[Path]) -> dict[str, str]:
    """{mp4 file name: instruction} for exactly the videos of the folder (else a VideoSourceError)."""
    path = Path(video.instructions).expanduser()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise VideoSourceError(f"data.video.instructions: cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise VideoSourceError(f"data.video.instructions: {path} is not valid YAML/JSON: {e}") from None
    if not isinstance(raw, dict):
        raise VideoSourceError(f"data.video.instructions: {path} must map each mp4 file name to its instruction "
                               f"(e.g. 'push_000.mp4: push the puck'), got a {type(raw).__name__}")
    names = {v.name for v in videos}
    bad = {str(k): v for k, v in raw.items() if not isinstance(v, str) or not v.strip()}
    if bad:
        raise VideoSourceError(f"data.video.instructions: {path}: empty or non-text instruction for "
                               f"{sorted(bad)[:5]}")
    missing, extra = sorted(names - set(map(str, raw))), sorted(set(map(str, raw)) - names)
    if missing or extra:
        raise VideoSourceError(
            f"data.video.instructions: {path} has {len(raw)} entries for {len(names)} videos in {video.path}: "
            + (f"no instruction for {missing[:5]}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"entries without a video: {extra[:5]}" if extra else ""))
    return {str(k): v.strip() for k, v in raw.items()}


def _mp4_files(video: VideoConfig) -> list[Path]:
    folder = Path(video.path).expanduser()
    if not folder.is_dir():
        raise VideoSourceError(f"data.video.path: {folder} is not a folder of mp4 files")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".mp4" and p.is_file())
    if not files:
        raise VideoSourceError(f"data.video.path: {folder} holds no *.mp4 file")
    return files


def mp4_dataset_path(video: VideoConfig, files: list[Path], instructions: dict[str, str]) -> Path:
    key = {
        "format_version": MP4_FORMAT_VERSION,
        "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        "instructions": instructions,
        "settings": video.model_dump(mode="json", include={"camera", "image_size", "fps", "min_frames"}),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(video.cache_dir).expanduser().resolve() / digest


def convert_mp4_folder(video: VideoConfig) -> Path:
    """The folder's videos as one LeRobot v3 dataset (one episode per mp4, no action column), cached."""
    files = _mp4_files(video)
    instructions = read_instructions(video, files)
    dest = mp4_dataset_path(video, files, instructions)
    return build_once(dest, lambda p: (p / F.INFO_PATH).is_file(),
                      lambda: _convert(video, files, instructions, dest), video.lock_timeout_s)


def _decode(path: Path, video: VideoConfig) -> tuple[np.ndarray, int]:
    """uint8 (T, S, S, 3) frames (resized when image_size is set) and the file's frame rate."""
    from vlaforge.data.video import decode_video, probe_video_info

    try:
        fps = int(probe_video_info(path)["video.fps"])
        frames, _ = decode_video(path)
    except Exception as e:  # noqa: BLE001 -- PyAV raises many types for a damaged file; all mean "unreadable"
        raise VideoSourceError(f"data.video: cannot read video {path}: {str(e).splitlines()[0][:200]}") from None
    if len(frames) < video.min_frames:
        raise VideoSourceError(f"data.video: {path} has {len(frames)} frame(s), fewer than "
                               f"data.video.min_frames={video.min_frames}")
    if video.image_size is not None and frames.shape[1:3] != (video.image_size, video.image_size):
        from PIL import Image

        s = video.image_size
        frames = np.stack([np.asarray(Image.fromarray(f).resize((s, s), Image.BILINEAR)) for f in frames])
    return frames, fps


def _convert(video: VideoConfig, files: list[Path], instructions: dict[str, str], dest: Path) -> Path:
    import pyarrow as pa

    from vlaforge.data.writer import DatasetWriter

    writer = None
    shape, first = None, None
    try:
        for path in files:
            frames, fps = _decode(path, video)
            if writer is None:
                shape, first = frames.shape[1:], path
                h, w = shape[:2]
                if h % 2 or w % 2:
                    raise VideoSourceError(f"data.video: {path} is {w}x{h}; yuv420p needs even sizes: set "
                                           "data.video.image_size")
                writer = DatasetWriter(
                    dest, fps=video.fps or fps, features={F.IMAGE_PREFIX + video.camera: F.video_feature(h, w)},
                    robot_type="unknown", episode_columns={"source_file": pa.string()},
                    provenance={"source": "mp4", "path": str(Path(video.path).expanduser().resolve())})
            elif frames.shape[1:] != shape:
                raise VideoSourceError(
                    f"data.video: {path} is {frames.shape[2]}x{frames.shape[1]} but {first.name} is "
                    f"{shape[1]}x{shape[0]}: set data.video.image_size to resize every video")
            writer.add_episode({F.IMAGE_PREFIX + video.camera: frames}, task=instructions[path.name],
                               source_file=path.name)
        out = writer.finalize()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    log.info("data.video: %d mp4 files -> %s", len(files), out)
    return out


def describe(path: Path) -> dict[str, Any]:
    """Episodes / frames / whether an action column exists: what `vlaforge demos --unlabeled` prints."""
    info = json.loads((Path(path) / F.INFO_PATH).read_text())
    return {"episodes": info["total_episodes"], "frames": info["total_frames"],
            "action_column": F.ACTION_KEY in info["features"]}
