"""Reader of LeRobot v3.0 datasets: ours and LeRobot's own (extra columns and features are tolerated).

``DatasetReader(root).load(episodes)`` returns every column of the selected episodes as numpy arrays,
plus each camera's frames decoded to uint8 (N, H, W, 3), all aligned row by row and ordered by the
global frame ``index``. Video frames are matched to rows by time, as LeRobot's loader does: row t of an
episode is the frame at ``from_timestamp + timestamp[t]`` of the episode's mp4 file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vlaforge.data import format as F
from vlaforge.data.stats import load_stats
from vlaforge.data.video import decode_video

_REQUIRED_INFO = ("codebase_version", "fps", "features", "data_path")
_REQUIRED_EPISODE_COLS = ("episode_index", "length", "dataset_from_index", "dataset_to_index")


class DatasetReader:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        info_path = self.root / F.INFO_PATH
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path} not found: {self.root} is not a LeRobot v3 dataset folder")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        missing = [k for k in _REQUIRED_INFO if k not in self.info]
        if missing:
            raise ValueError(f"{info_path}: missing keys {missing}")
        version = str(self.info["codebase_version"])
        if not version.startswith("v3."):
            raise ValueError(
                f"{info_path}: codebase_version {version!r}; only the v3.x layout is read "
                "(convert v2.1 datasets with LeRobot's convert_dataset_v21_to_v30)"
            )
        self.fps = int(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.image_keys = [k for k, f in self.features.items() if f.get("dtype") == "image"]
        self.camera_keys = [k for k in self.features if F.is_visual(self.features[k])]
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        stats_path = self.root / F.STATS_PATH
        self.stats = load_stats(stats_path) if stats_path.is_file() else None
        prov = self.root / F.VLAFORGE_META_PATH
        self.provenance: dict[str, Any] | None = json.loads(prov.read_text()) if prov.is_file() else None

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def episode_indices(self) -> list[int]:
        return [int(e) for e in self.episodes.index]

    def _load_tasks(self) -> list[str]:
        path = self.root / F.TASKS_PATH
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (LeRobot v3 keeps tasks in meta/tasks.parquet)")
        df = pd.read_parquet(path)
        names = df["task"] if "task" in df.columns else pd.Series(df.index, index=df.index)
        if "task_index" not in df.columns:
            raise ValueError(f"{path}: no 'task_index' column (columns: {list(df.columns)})")
        by_index = dict(zip(df["task_index"].astype(int), names.astype(str)))
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"{path}: task_index values must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
        return [by_index[i] for i in range(len(by_index))]

    def _load_episodes(self) -> pd.DataFrame:
        paths = sorted((self.root / F.EPISODES_DIR).glob("*/*.parquet"))
        if not paths:
            raise FileNotFoundError(f"no episode tables under {self.root / F.EPISODES_DIR}")
        tables = [pq.read_table(p) for p in paths]
        df = pd.concat([t.drop_columns([c for c in t.column_names if c.startswith("stats/")]).to_pandas()
                        for t in tables], ignore_index=True)
        missing = [c for c in _REQUIRED_EPISODE_COLS if c not in df.columns]
        if missing:
            raise ValueError(f"episode tables under {self.root / F.EPISODES_DIR}: missing columns {missing}")
        return df.sort_values("episode_index").set_index("episode_index", drop=False)

    def episode_tasks(self) -> dict[int, list[str]]:
        return {int(e): list(t) for e, t in zip(self.episodes.index, self.episodes["tasks"])}

    def load(
        self, episodes: Sequence[int] | None = None, cameras: bool | Sequence[str] = True
    ) -> dict[str, np.ndarray]:
        """Columns of the selected episodes (default: all), rows ordered by ``index``.

        Returns {feature: (N,) or (N, D) array} for every parquet column (strings as object arrays)
        and {camera feature: uint8 (N, H, W, 3)} for ``cameras`` (True: all, False: none, or a list
        of camera feature keys)."""
        eps = self._select(episodes)
        ep_rows = self.episodes.loc[eps]
        files = sorted({self._data_file(r) for _, r in ep_rows.iterrows()})
        tables = []
        for c, f in files:
            path = self.root / self.info["data_path"].format(chunk_index=c, file_index=f)
            if not path.is_file():
                raise FileNotFoundError(f"data file {path} (listed in the episodes table) is missing")
            tables.append(pq.read_table(path, filters=[("episode_index", "in", list(eps))]))
        table = pa.concat_tables(tables, promote_options="permissive").sort_by("index")
        out: dict[str, np.ndarray] = {}
        for key in table.column_names:
            feat = self.features.get(key)
            if feat is None or feat.get("dtype") == "image":
                continue  # tolerate columns the features do not declare (and decode images below)
            out[key] = F.numpy_column(key, feat, table[key])
        expected = int(ep_rows["length"].sum())
        if len(table) != expected:
            raise ValueError(f"{self.root}: the data files hold {len(table)} rows for episodes {eps[:8]}..., "
                             f"the episodes table says {expected}")
        wanted = self.camera_keys if cameras is True else list(cameras or [])
        unknown = [k for k in wanted if k not in self.camera_keys]
        if unknown:
            raise KeyError(f"{self.root}: cameras {unknown} not in the dataset (cameras: {self.camera_keys})")
        for key in wanted:
            if key in self.image_keys:
                out[key] = _decode_images(key, table[key].to_pylist())
            else:
                out[key] = self._load_video(key, ep_rows, out["episode_index"], out["timestamp"])
        return out

    def _select(self, episodes: Sequence[int] | None) -> list[int]:
        if episodes is None:
            return self.episode_indices
        eps = [int(e) for e in episodes]
        unknown = sorted(set(eps) - set(self.episode_indices))
        if unknown:
            raise ValueError(f"{self.root}: episodes {unknown[:10]} not in the dataset ({self.num_episodes} episodes)")
        if not eps:
            raise ValueError("episode selection is empty")
        return sorted(set(eps))

    @staticmethod
    def _data_file(row: pd.Series) -> tuple[int, int]:
        return int(row.get("data/chunk_index", 0)), int(row.get("data/file_index", 0))

    def _load_video(self, key: str, ep_rows: pd.DataFrame, ep_col: np.ndarray, ts_col: np.ndarray) -> np.ndarray:
        h, w = self.features[key]["shape"][:2]
        out = np.empty((len(ep_col), h, w, 3), dtype=np.uint8)
        tol = 0.5 / self.fps  # nearest frame, unambiguously
        by_file: dict[tuple[int, int], list[int]] = {}
        for ep, r in ep_rows.iterrows():
            c, f = int(r[f"videos/{key}/chunk_index"]), int(r[f"videos/{key}/file_index"])
            by_file.setdefault((c, f), []).append(int(ep))
        for (c, f), eps in by_file.items():
            path = self.root / self.info["video_path"].format(video_key=key, chunk_index=c, file_index=f)
            if not path.is_file():
                raise FileNotFoundError(f"video file {path} (listed in the episodes table) is missing")
            starts = {ep: float(ep_rows.loc[ep, f"videos/{key}/from_timestamp"]) for ep in eps}
            ranges = [(starts[ep] - tol, float(ep_rows.loc[ep, f"videos/{key}/to_timestamp"]) + tol) for ep in eps]
            frames, times = decode_video(path, ranges)
            if frames.shape[1:3] != (h, w):
                raise ValueError(f"{path}: frames are {frames.shape[1:3]}, info.json declares {key!r} as {(h, w)}")
            for ep in eps:
                rows = np.flatnonzero(ep_col == ep)
                want = starts[ep] + ts_col[rows].astype(np.float64)  # (T,) seconds in the file
                j = np.clip(np.searchsorted(times, want), 1, len(times) - 1)
                j = np.where(np.abs(times[j - 1] - want) <= np.abs(times[j] - want), j - 1, j)
                err = np.abs(times[j] - want)
                if err.max(initial=0.0) > tol:
                    bad = int(np.argmax(err))
                    raise ValueError(f"{path}: episode {ep} frame {bad} wants t={want[bad]:.4f}s, nearest decoded "
                                     f"frame is {err[bad]:.4f}s away (> {tol:.4f}s); the video is short or misaligned")
                out[rows] = frames[j]
        return out


def _decode_images(key: str, cells: list[Any]) -> np.ndarray:
    """'image' features (LeRobot stores PNG/JPEG bytes in parquet as {bytes, path}) -> uint8 (N, H, W, 3)."""
    from PIL import Image

    imgs = []
    for cell in cells:
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if data is None:
            raise ValueError(f"image feature {key!r}: a row holds no embedded bytes (path-only images are not read)")
        imgs.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(imgs)
