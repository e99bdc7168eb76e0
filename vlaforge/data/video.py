"""mp4 encoding / decoding with PyAV for LeRobot v3 video features.

One ``VideoFileEncoder`` owns one mp4 file and receives episodes back to back; frame i of the file has
pts i in a 1/fps time base, so an episode that starts at file frame ``o`` lives at
``[o / fps, (o + T) / fps)`` -- exactly the ``from_timestamp`` / ``to_timestamp`` the episodes table
records. yuv420p halves chroma resolution, so width and height must be even.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

# SVT-AV1 prints a banner per encoder to stderr unless told otherwise (1 = errors only).
os.environ.setdefault("SVT_LOG", "1")

import av  # noqa: E402  (after SVT_LOG)


def _scheduling() -> tuple[int, os.sched_param] | None:
    try:
        return os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):  # not Linux
        return None


def _restore_scheduling(saved: tuple[int, os.sched_param] | None) -> None:
    """Undo SVT-AV1's scheduling change. libsvtav1 (the AV1 encoder in PyAV's FFmpeg) switches the calling
    thread to SCHED_FIFO priority 99 whenever it is allowed to (as root: every CI run here). Every process
    forked afterwards (Ray nodes, wandb, test subprocesses) then inherited real-time priority, and a few of
    them spinning at it starved the 2-core machine (load average 330, minute-long stalls). Measured
    2026-12-02: tests/data/test_format.py left pytest at SCHED_FIFO before this restore."""
    if saved is None:
        return
    try:
        if os.sched_getscheduler(0) != saved[0] or os.sched_getparam(0).sched_priority != saved[1].sched_priority:
            os.sched_setscheduler(0, saved[0], saved[1])
    except OSError:
        pass


@dataclass(frozen=True)
class Codec:
    encoder: str  # PyAV / FFmpeg encoder name
    # g=2 (a key frame every 2 frames) as LeRobot does: its loader seeks to a key frame then decodes
    # forward, so random access stays cheap. Our own reader decodes whole files and does not care.
    options: dict[str, str] = field(default_factory=dict)
    pix_fmt: str = "yuv420p"


# Registry of codecs by the name recipes use (DemoConfig.video_codec).
CODECS: dict[str, Codec] = {
    # crf 18: small images (32-64 px) lose fine detail quickly at h264's default 23.
    "h264": Codec("libx264", {"crf": "18", "g": "2", "preset": "veryfast"}),
    # LeRobot's default (libsvtav1, crf 30, g 2); preset 10 trades size for encoding speed on CPU.
    "av1": Codec("libsvtav1", {"crf": "30", "g": "2", "preset": "10"}),
}


def get_codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"unknown video codec {name!r}; expected one of {sorted(CODECS)}")
    return CODECS[name]


class VideoFileEncoder:
    """Appends uint8 RGB frames (T, H, W, 3) to one mp4; episodes back to back."""

    def __init__(self, path: str | Path, height: int, width: int, fps: int, codec: str = "h264"):
        if height % 2 or width % 2:
            raise ValueError(
                f"video {path}: {height}x{width} has an odd side; yuv420p needs even width and height "
                "(use an even image size)"
            )
        c = get_codec(codec)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.height, self.width, self.fps = height, width, fps
        self._sched = _scheduling()  # restored after every encoder call (_restore_scheduling)
        self._container = av.open(str(self.path), "w")
        self._stream = self._container.add_stream(c.encoder, rate=fps, options=dict(c.options))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, c.pix_fmt
        self._time_base = Fraction(1, fps)
        self.frames_written = 0
        self.bytes_written = 0  # muxed packet bytes: the file's size without the container overhead
        self._closed = False

    def add_frames(self, frames: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"video {self.path}: expected uint8 frames (T, {self.height}, {self.width}, 3), "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = self.frames_written, self._time_base
            try:
                self._mux(self._stream.encode(frame))
            finally:
                _restore_scheduling(self._sched)
            self.frames_written += 1

    def _mux(self, packets) -> None:
        for p in packets:
            self.bytes_written += p.size
            self._container.mux(p)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._mux(self._stream.encode())  # flush delayed (B-)frames
        finally:
            self._container.close()
            _restore_scheduling(self._sched)


def encode_video(frames: np.ndarray, path: str | Path, fps: int, codec: str = "h264") -> Path:
    """Write uint8 frames (T, H, W, 3) to one mp4 (e.g. a rollout video). Returns the path."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"encode_video {path}: expected uint8 frames (T, H, W, 3), got {frames.shape}")
    enc = VideoFileEncoder(path, frames.shape[1], frames.shape[2], fps, codec)
    try:
        enc.add_frames(frames)
    finally:
        enc.close()
    return enc.path


def decode_video(
    path: str | Path, ranges: list[tuple[float, float]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Frames of an mp4: uint8 (N, H, W, 3) and their presentation times in seconds (N,), sorted by time.

    ``ranges``: keep only frames whose time falls in one of these [start, end] windows (seconds),
    so selecting a few episodes of a big file does not hold the whole file in memory."""
    frames, times = [], []
    lo = min(r[0] for r in ranges) if ranges else None
    hi = max(r[1] for r in ranges) if ranges else None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                if ranges and not any(a <= t <= b for a, b in ranges):
                    if t > hi and lo is not None:
                        break  # frames come (nearly) in time order; B-frames never reach this far
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"cannot decode video {path}: {e}") from e
    if not frames:
        raise ValueError(f"video {path} holds no decodable frames in {ranges or 'the file'}")
    order = np.argsort(times, kind="stable")
    return np.stack(frames)[order], np.asarray(times, dtype=np.float64)[order]


def probe_video_info(path: str | Path, codec: str | None = None) -> dict[str, Any]:
    """The ``info`` dict of a video feature, with LeRobot's (0.4.x) keys."""
    with av.open(str(path)) as container:
        s = container.streams.video[0]
        info: dict[str, Any] = {
            "video.height": s.height,
            "video.width": s.width,
            "video.codec": s.codec_context.codec.canonical_name if s.codec_context else s.codec.canonical_name,
            "video.pix_fmt": s.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(s.base_rate),
            "video.channels": 3,
            "has_audio": len(container.streams.audio) > 0,
        }
    if codec is not None:  # encoder settings under LeRobot's keys (video.g, video.crf, video.preset)
        for k, v in get_codec(codec).options.items():
            info.setdefault(f"video.{k}", int(v) if v.isdigit() else v)
    return info
