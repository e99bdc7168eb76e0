"""Feature statistics in LeRobot's stats.json layout: min, max, mean, std, count, q01, q10, q50, q90, q99.

Numeric features: per dimension, shape (D,) ((1,) for scalars). Images: per channel, shape (3, 1, 1),
scaled to [0, 1]. Image statistics come from exact 256-bin per-channel histograms of the uint8 pixels,
so quantiles are exact and accumulating a whole dataset costs one ``bincount`` per frame batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count") + QUANTILE_KEYS


def numeric_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over axis 0 of (N,) or (N, D) values; booleans count as 0/1."""
    if x.shape[0] == 0:
        raise ValueError("cannot compute statistics of an empty feature")
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(len(x), -1)  # (N, D); scalars become (N, 1) -> stats of shape (1,)
    out = {
        "min": x.min(0),
        "max": x.max(0),
        "mean": x.mean(0),
        "std": x.std(0),
        "count": np.array([len(x)]),
    }
    for key, q in zip(QUANTILE_KEYS, np.quantile(x, QUANTILES, axis=0)):
        out[key] = q
    return out


class ImageStats:
    """Accumulates per-channel pixel histograms of uint8 (N, H, W, 3) frames."""

    def __init__(self) -> None:
        self.hist = np.zeros((3, 256), dtype=np.int64)
        self.frames = 0

    def update(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"image stats expect uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        for c in range(3):
            self.hist[c] += np.bincount(frames[..., c].ravel(), minlength=256)
        self.frames += len(frames)

    def merge(self, other: ImageStats) -> None:
        self.hist += other.hist
        self.frames += other.frames

    def result(self) -> dict[str, np.ndarray]:
        if self.frames == 0:
            raise ValueError("cannot compute statistics of an empty image feature")
        v = np.arange(256, dtype=np.float64) / 255.0  # pixel value of each bin, in [0, 1]
        n = self.hist.sum(1).astype(np.float64)  # (3,)
        mean = (self.hist * v).sum(1) / n
        var = np.maximum((self.hist * v**2).sum(1) / n - mean**2, 0.0)
        cdf = np.cumsum(self.hist, 1) / n[:, None]  # (3, 256)
        nonzero = self.hist > 0
        out = {
            "min": v[np.argmax(nonzero, 1)],
            "max": v[255 - np.argmax(nonzero[:, ::-1], 1)],
            "mean": mean,
            "std": np.sqrt(var),
        }
        for key, q in zip(QUANTILE_KEYS, QUANTILES):
            out[key] = v[np.argmax(cdf >= q - 1e-12, 1)]  # first bin whose cdf reaches q
        out = {k: a.reshape(3, 1, 1) for k, a in out.items()}
        out["count"] = np.array([self.frames])
        return out


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    acc = ImageStats()
    acc.update(frames)
    return acc.result()


def to_jsonable(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


def load_stats(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """stats.json -> {feature: {stat: float32/int64 array}} (LeRobot's ``cast_stats_to_numpy``).

    LeRobot writes it nested ({feature: {stat: value}}); flat "feature/stat" keys are accepted too."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of features, got {type(raw).__name__}")
    nested: dict[str, dict[str, Any]] = {}
    for key, val in raw.items():
        if isinstance(val, dict):
            nested.setdefault(key, {}).update(val)
        elif "/" in key:
            feat, stat = key.rsplit("/", 1)
            nested.setdefault(feat, {})[stat] = val
        else:
            raise ValueError(f"{path}: entry {key!r} is neither a feature dict nor a 'feature/stat' key")
    return {
        f: {k: np.atleast_1d(np.asarray(v, dtype=np.int64 if k == "count" else np.float32)) for k, v in s.items()}
        for f, s in nested.items()
    }
