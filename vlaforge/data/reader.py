"""Reader of LeRobot v3.0 datasets: ours and LeRobot's own (extra columns and features are tolerated).

``DatasetReader(root).load(episodes)`` returns every column of the selected episodes as numpy arrays,
plus each camera's frames decoded to uint8 (N, H, W, 3), all aligned row by row and ordered by the
global frame ``index``. Video frames are matched to rows by time, as LeRobot's loader does: row t of an
episode is the frame at ``from_timestamp + timestamp[t]`` of the episode's mp4 file.

Faults: a parquet or mp4 file that cannot be read (truncated, corrupt) or does not hold what the episodes
table says raises ``DataFileError`` naming the file and the episodes it holds; with ``skip_bad=True`` those
episodes are dropped instead and listed in ``bad_episodes`` (episode -> reason). Paths come from
``meta/info.json`` (``data_path`` / ``video_path`` templates, file indices of the episodes table): the
dataset is untrusted input, so every such path must stay inside the dataset folder.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vlaforge.data import format as F
from vlaforge.data.stats import load_stats
from vlaforge.data.video import decode_video
from vlaforge.errors import VlaforgeError

_REQUIRED_INFO = ("codebase_version", "fps", "features", "data_path")
_REQUIRED_EPISODE_COLS = ("episode_index", "length", "dataset_from_index", "dataset_to_index")
# What pyarrow raises on a truncated / corrupt parquet file (ArrowInvalid is a ValueError, ArrowIOError an OSError).
_PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError)


class DataFileError(VlaforgeError, ValueError):
    """A dataset file cannot be read or does not match the episodes table; names the file and its episodes."""

    def __init__(self, path: Path, episodes: Sequence[int], reason: str):
        self.path, self.episodes, self.reason = Path(path), [int(e) for e in episodes], reason
        if not self.episodes:  # a metadata file: nothing to skip
            super().__init__(f"{path}: {reason}")
            return
        eps = ", ".join(map(str, self.episodes[:20])) + (" ..." if len(self.episodes) > 20 else "")
        super().__init__(f"{path} (episode{'s' if len(self.episodes) != 1 else ''} {eps}): {reason}. Regenerate "
                         "the dataset, or set data.skip_bad_episodes: true to train on the other episodes")

    def __reduce__(self):  # picklable with its fields (it crosses Ray's process boundary from learner ranks)
        return type(self), (self.path, self.episodes, self.reason)


class DatasetReader:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        info_path = self.root / F.INFO_PATH
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path} not found: {self.root} is not a LeRobot v3 dataset folder")
        try:
            self.info: dict[str, Any] = json.loads(info_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataFileError(info_path, [], f"unreadable ({e})") from None
        if not isinstance(self.info, dict):
            raise DataFileError(info_path, [], "not a JSON object")
        self.bad_episodes: dict[int, str] = {}  # filled by load(skip_bad=True): episode -> why it was dropped
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
        try:
            df = pd.read_parquet(path)
        except _PARQUET_ERRORS as e:
            raise DataFileError(path, [], f"the task table is unreadable ({_short(e)})") from None
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
        tables = []
        for p in paths:  # the episodes table is the index of everything: no skipping past it
            try:
                tables.append(pq.read_table(p))
            except _PARQUET_ERRORS as e:
                raise DataFileError(p, [], f"the episodes table is unreadable ({_short(e)})") from None
        df = pd.concat([t.drop_columns([c for c in t.column_names if c.startswith("stats/")]).to_pandas()
                        for t in tables], ignore_index=True)
        missing = [c for c in _REQUIRED_EPISODE_COLS if c not in df.columns]
        if missing:
            raise ValueError(f"episode tables under {self.root / F.EPISODES_DIR}: missing columns {missing}")
        return df.sort_values("episode_index").set_index("episode_index", drop=False)

    def resolve_cameras(self, cameras: Sequence[str] | None) -> list[str]:
        """Camera names or full feature keys -> feature keys, in the given order (None: every camera)."""
        available = self.camera_keys
        if cameras is None:
            return list(available)
        out = []
        for c in cameras:
            key = c if c in available else F.IMAGE_PREFIX + c
            if key not in available:
                raise KeyError(f"{self.root}: camera {c!r} not in the dataset (cameras: {available})")
            out.append(key)
        return out

    def episode_tasks(self) -> dict[int, list[str]]:
        return {int(e): list(t) for e, t in zip(self.episodes.index, self.episodes["tasks"])}

    def load(
        self, episodes: Sequence[int] | None = None, cameras: bool | Sequence[str] = True, skip_bad: bool = False
    ) -> dict[str, np.ndarray]:
        """Columns of the selected episodes (default: all), rows ordered by ``index``.

        Returns {feature: (N,) or (N, D) array} for every parquet column (strings as object arrays)
        and {camera feature: uint8 (N, H, W, 3)} for ``cameras`` (True: all, False: none, or a list
        of camera feature keys). ``skip_bad``: drop the episodes of unreadable files (``bad_episodes``)
        instead of raising ``DataFileError``."""
        eps = self._select(episodes)
        wanted = self.camera_keys if cameras is True else list(cameras or [])
        unknown = [k for k in wanted if k not in self.camera_keys]
        if unknown:
            raise KeyError(f"{self.root}: cameras {unknown} not in the dataset (cameras: {self.camera_keys})")
        self.bad_episodes = {}
        ep_rows = self.episodes.loc[eps]
        by_file: dict[tuple[int, int], list[int]] = {}
        for ep, r in ep_rows.iterrows():
            by_file.setdefault(self._data_file(r), []).append(int(ep))
        tables = []
        for (c, f), members in sorted(by_file.items()):
            path = self._path("data_path", chunk_index=c, file_index=f)
            try:
                tables.append(self._read_data_file(path, members, ep_rows))
            except DataFileError as e:
                self._bad(e, skip_bad)
        good = self._good(eps)
        table = pa.concat_tables(tables, promote_options="permissive").sort_by("index")
        out: dict[str, np.ndarray] = {}
        for key in table.column_names:
            feat = self.features.get(key)
            if feat is None or feat.get("dtype") == "image":
                continue  # tolerate columns the features do not declare (and decode images below)
            out[key] = F.numpy_column(key, feat, table[key])
        for key in wanted:
            if key in self.image_keys:
                out[key] = _decode_images(key, table[key].to_pylist())
            else:
                out[key] = self._load_video(key, ep_rows.loc[good], out["episode_index"], out["timestamp"], skip_bad)
        self._good(eps)  # a video may have failed for every remaining episode
        if self.bad_episodes:  # episodes whose video failed after their rows were read: drop their rows
            keep = ~np.isin(out["episode_index"], list(self.bad_episodes))
            out = {k: v[keep] for k, v in out.items()}
        return out

    def _good(self, eps: list[int]) -> list[int]:
        good = [e for e in eps if e not in self.bad_episodes]
        if not good:
            raise DataFileError(self.root, eps, "no selected episode is readable: " + "; ".join(
                sorted(set(self.bad_episodes.values()))[:3]))
        return good

    def _bad(self, err: DataFileError, skip: bool) -> None:
        if not skip:
            raise err
        for e in err.episodes:
            self.bad_episodes.setdefault(e, f"{err.path}: {err.reason}")

    def _path(self, template_key: str, **fields: Any) -> Path:
        """``info[template_key]`` formatted -> a path that must stay inside the dataset folder. Checked
        lexically (no ``..`` escape, not absolute), not by resolving symlinks: Hugging Face cache snapshots
        are folders of symlinks into a blob store, and those are fine to read."""
        template = self.info.get(template_key)
        if not isinstance(template, str):
            raise DataFileError(self.root / F.INFO_PATH, [], f"{template_key!r} is {template!r}, expected a path template")
        try:
            rel = template.format(**fields)
        except (KeyError, IndexError, ValueError) as e:
            raise DataFileError(self.root / F.INFO_PATH, [], f"{template_key} {template!r} cannot be formatted ({e})") from None
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep) or "\0" in rel:
            raise DataFileError(self.root / F.INFO_PATH, [], f"{template_key} {template!r} gives {rel!r}, a path "
                                "outside the dataset folder; refusing to read it")
        return self.root / norm

    def _read_data_file(self, path: Path, members: list[int], ep_rows: pd.DataFrame) -> pa.Table:
        if not path.is_file():
            raise DataFileError(path, members, "missing (listed in the episodes table)")
        try:
            table = pq.read_table(path, filters=[("episode_index", "in", members)])
        except _PARQUET_ERRORS as e:
            raise DataFileError(path, members, f"unreadable parquet, truncated or corrupt ({_short(e)})") from None
        if "episode_index" not in table.column_names or "index" not in table.column_names:
            raise DataFileError(path, members, "no episode_index/index column")
        counts = pd.Series(table["episode_index"].to_numpy(zero_copy_only=False)).value_counts()
        short = [e for e in members if int(counts.get(e, 0)) != int(ep_rows.loc[e, "length"])]
        if short:
            e = short[0]
            raise DataFileError(path, short, f"holds {int(counts.get(e, 0))} rows of episode {e}, the episodes "
                                f"table says {int(ep_rows.loc[e, 'length'])}")
        return table

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

    def _load_video(self, key: str, ep_rows: pd.DataFrame, ep_col: np.ndarray, ts_col: np.ndarray,
                    skip_bad: bool) -> np.ndarray:
        h, w = self.features[key]["shape"][:2]
        out = np.zeros((len(ep_col), h, w, 3), dtype=np.uint8)
        tol = 0.5 / self.fps  # nearest frame, unambiguously
        by_file: dict[tuple[int, int], list[int]] = {}
        for ep, r in ep_rows.iterrows():
            c, f = int(r[f"videos/{key}/chunk_index"]), int(r[f"videos/{key}/file_index"])
            by_file.setdefault((c, f), []).append(int(ep))
        for (c, f), eps in by_file.items():
            path = self._path("video_path", video_key=key, chunk_index=c, file_index=f)
            try:
                self._read_video_file(path, key, eps, ep_rows, ep_col, ts_col, out, (h, w), tol)
            except DataFileError as e:
                self._bad(e, skip_bad)
        return out

    def _read_video_file(self, path: Path, key: str, eps: list[int], ep_rows: pd.DataFrame, ep_col: np.ndarray,
                         ts_col: np.ndarray, out: np.ndarray, hw: tuple[int, int], tol: float) -> None:
        if not path.is_file():
            raise DataFileError(path, eps, "missing (listed in the episodes table)")
        starts = {ep: float(ep_rows.loc[ep, f"videos/{key}/from_timestamp"]) for ep in eps}
        ranges = [(starts[ep] - tol, float(ep_rows.loc[ep, f"videos/{key}/to_timestamp"]) + tol) for ep in eps]
        try:
            frames, times = decode_video(path, ranges)
        except ValueError as e:  # decode_video wraps FFmpeg's errors
            raise DataFileError(path, eps, f"cannot decode the video, truncated or corrupt ({_short(e)})") from None
        if frames.shape[1:3] != hw:
            raise DataFileError(path, eps, f"frames are {frames.shape[1:3]}, info.json declares {key!r} as {hw}")
        bad = []
        for ep in eps:
            rows = np.flatnonzero(ep_col == ep)
            want = starts[ep] + ts_col[rows].astype(np.float64)  # (T,) seconds in the file
            j = np.clip(np.searchsorted(times, want), 1, len(times) - 1) if len(times) > 1 else np.zeros(len(want), int)
            if len(times) > 1:
                j = np.where(np.abs(times[j - 1] - want) <= np.abs(times[j] - want), j - 1, j)
            err = np.abs(times[j] - want)
            if err.max(initial=0.0) > tol:
                i = int(np.argmax(err))
                bad.append((ep, f"frame {i} of episode {ep} wants t={want[i]:.4f}s, the nearest decoded frame is "
                                f"{err[i]:.4f}s away (> {tol:.4f}s): the video is short (truncated?) or misaligned"))
                continue
            out[rows] = frames[j]
        if bad:
            raise DataFileError(path, [e for e, _ in bad], bad[0][1])

def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


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
