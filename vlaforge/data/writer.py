"""Writer of LeRobot v3.0 datasets (layout in ``vlaforge.data.format``), atomically.

Everything is written into ``<root>.tmp-<random>`` beside the target and renamed into place by
``finalize()``: a crash (or an exception inside ``with DatasetWriter(...)``) never leaves a folder at
``root`` that looks complete, and an existing dataset is only replaced once the new one is whole.
Episodes stream to disk as they arrive: one parquet row group per episode, one open mp4 encoder per
camera that receives episodes back to back; files roll over at LeRobot's size limits.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vlaforge.data import format as F
from vlaforge.data.stats import ImageStats, numeric_stats, to_jsonable
from vlaforge.data.video import VideoFileEncoder, probe_video_info


class DatasetWriter:
    """``add_episode`` per episode, then ``finalize()`` (or use as a context manager).

    ``features``: the dataset's own features (LeRobot dicts: dtype, shape, names); the five per-frame
    bookkeeping columns (timestamp, frame_index, episode_index, index, task_index) are added here.
    ``episode_columns``: extra per-episode columns of the episodes table (e.g. ``{"env_task": pa.string()}``).
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: Mapping[str, dict[str, Any]],
        robot_type: str | None = None,
        codec: str = "h264",
        episode_columns: Mapping[str, pa.DataType] | None = None,
        overwrite: bool = False,
        data_file_mb: float = F.DATA_FILE_MB,
        video_file_mb: float = F.VIDEO_FILE_MB,
        provenance: dict[str, Any] | None = None,
    ):
        self.root = Path(root).expanduser()
        if self.root.exists() and not overwrite:
            raise FileExistsError(f"dataset folder {self.root} exists (pass overwrite=True to replace it)")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        clash = set(features) & set(F.DEFAULT_FEATURES)
        if clash:
            raise ValueError(f"features {sorted(clash)} are bookkeeping columns the writer adds itself")
        self.fps, self.robot_type, self.codec, self.overwrite = fps, robot_type, codec, overwrite
        self.features: dict[str, dict[str, Any]] = {k: dict(v) for k, v in features.items()}
        self.features.update({k: dict(v) for k, v in F.DEFAULT_FEATURES.items()})
        self.video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        if any(f["dtype"] == "image" for f in self.features.values()):
            raise ValueError("'image' features (PNG in parquet) are not written; declare cameras as 'video'")
        self.column_keys = [k for k in self.features if k not in self.video_keys]
        self.schema = pa.schema([(k, F.arrow_type(k, self.features[k])) for k in self.column_keys])
        self.episode_columns = dict(episode_columns or {})
        self.data_file_mb, self.video_file_mb = data_file_mb, video_file_mb
        self.provenance = provenance

        self.tmp = self.root.parent / f"{self.root.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir()
        self._tasks: dict[str, int] = {}  # instruction -> task_index, in first-seen order
        self._episodes: list[dict[str, Any]] = []
        self._numeric: dict[str, list[np.ndarray]] = {k: [] for k in self.column_keys if self._has_stats(k)}
        self._images = {k: ImageStats() for k in self.video_keys}
        self._data_file = (0, 0)  # (chunk_index, file_index)
        self._pq: pq.ParquetWriter | None = None
        self._video: dict[str, VideoFileEncoder] = {}
        self._video_file = {k: (0, 0) for k in self.video_keys}
        self.total_frames = 0
        self._done = False

    # -- public ----------------------------------------------------------------------------------
    def add_episode(self, frames: Mapping[str, np.ndarray], task: str, **extra: Any) -> int:
        """Append one episode. ``frames``: every declared feature -> array (T, *shape) (scalar features
        may be (T,)); videos uint8 (T, H, W, 3). ``task``: the language instruction. ``extra``: values
        of the declared ``episode_columns``. Returns the episode index."""
        if self._done:
            raise RuntimeError("writer already finalized/aborted")
        ep = len(self._episodes)
        cols, length = self._check_frames(frames, ep)
        missing = set(self.episode_columns) - set(extra)
        unknown = set(extra) - set(self.episode_columns)
        if missing or unknown:
            raise ValueError(f"episode {ep}: episode columns missing {sorted(missing)}, undeclared {sorted(unknown)}")
        task_index = self._tasks.setdefault(task, len(self._tasks))
        start = self.total_frames
        cols["timestamp"] = (np.arange(length) / self.fps).astype(np.float32)
        cols["frame_index"] = np.arange(length, dtype=np.int64)
        cols["episode_index"] = np.full(length, ep, dtype=np.int64)
        cols["index"] = np.arange(start, start + length, dtype=np.int64)
        cols["task_index"] = np.full(length, task_index, dtype=np.int64)

        row: dict[str, Any] = {"episode_index": ep, "tasks": [task], "length": length}
        row.update(self._write_data(cols, length))
        row["dataset_from_index"], row["dataset_to_index"] = start, start + length
        for key in self.video_keys:
            row.update(self._write_video(key, frames[key]))
        stats = {k: numeric_stats(cols[k]) for k in self._numeric}
        for k in self.video_keys:
            acc = ImageStats()
            acc.update(frames[k])
            stats[k] = acc.result()
            self._images[k].merge(acc)  # dataset stats = merged per-episode histograms
        for k in self._numeric:
            self._numeric[k].append(cols[k])
        row.update({f"stats/{k}/{s}": v.tolist() for k, st in stats.items() for s, v in st.items()})
        row.update(extra)
        self._episodes.append(row)
        self.total_frames += length
        return ep

    def finalize(self) -> Path:
        """Close files, write meta/, move the folder into place. Returns the dataset root."""
        if self._done:
            raise RuntimeError("writer already finalized/aborted")
        if not self._episodes:
            raise ValueError(f"dataset {self.root}: no episodes were added")
        try:
            self._close_files()
            self._write_meta()
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.root

    def abort(self) -> None:
        """Drop everything written so far; ``root`` is left as it was."""
        self._done = True
        try:
            self._close_files()
        except Exception:  # noqa: BLE001 -- best effort: the folder is deleted below anyway
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.finalize()

    # -- internals -------------------------------------------------------------------------------
    def _has_stats(self, key: str) -> bool:
        return self.features[key]["dtype"] != "string"

    def _check_frames(self, frames: Mapping[str, np.ndarray], ep: int) -> tuple[dict[str, np.ndarray], int]:
        need = [k for k in self.features if k not in F.DEFAULT_FEATURES]
        missing, unknown = set(need) - set(frames), set(frames) - set(need)
        if missing or unknown:
            raise ValueError(f"episode {ep}: features missing {sorted(missing)}, undeclared {sorted(unknown)}")
        lengths = {k: len(frames[k]) for k in need}
        length = next(iter(lengths.values()))
        if length == 0 or any(n != length for n in lengths.values()):
            raise ValueError(f"episode {ep}: every feature needs the same number (>0) of frames, got {lengths}")
        cols = {}
        for k in need:
            f, arr = self.features[k], np.asarray(frames[k])
            shape = tuple(f["shape"])
            if f["dtype"] == "video":
                if arr.dtype != np.uint8 or arr.shape[1:] != shape:
                    raise ValueError(f"episode {ep}: {k!r} must be uint8 (T, {', '.join(map(str, shape))}), "
                                     f"got {arr.dtype} {arr.shape}")
                continue
            if shape == (1,) and arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            want = (length,) if shape == (1,) else (length, *shape)
            if arr.shape != want:
                raise ValueError(f"episode {ep}: {k!r} must have shape {want}, got {arr.shape}")
            cols[k] = arr.astype(f["dtype"] if f["dtype"] != "string" else object, copy=False)
        return cols, length

    def _write_data(self, cols: dict[str, np.ndarray], length: int) -> dict[str, int]:
        arrays = []
        for k in self.column_keys:
            t = self.schema.field(k).type
            if pa.types.is_fixed_size_list(t):
                flat = pa.array(np.ascontiguousarray(cols[k]).reshape(-1), type=t.value_type)
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, t.list_size))
            else:
                arrays.append(pa.array(cols[k], type=t))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if self._pq is not None and self._pq_path().stat().st_size >= self.data_file_mb * 2**20:
            self._pq.close()
            self._pq, self._data_file = None, _next_file(*self._data_file)
        if self._pq is None:
            self._pq_path().parent.mkdir(parents=True, exist_ok=True)
            self._pq = pq.ParquetWriter(self._pq_path(), self.schema, compression="snappy")
        self._pq.write_table(table, row_group_size=max(length, 1))  # one row group per episode
        c, f = self._data_file
        return {"data/chunk_index": c, "data/file_index": f}

    def _pq_path(self) -> Path:
        c, f = self._data_file
        return self.tmp / F.DATA_PATH.format(chunk_index=c, file_index=f)

    def _write_video(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        enc = self._video.get(key)
        if enc is not None and enc.bytes_written >= self.video_file_mb * 2**20:
            enc.close()
            enc, self._video_file[key] = None, _next_file(*self._video_file[key])
        if enc is None:
            c, f = self._video_file[key]
            h, w, _ = self.features[key]["shape"]
            path = self.tmp / F.VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)
            enc = self._video[key] = VideoFileEncoder(path, h, w, self.fps, self.codec)
        start = enc.frames_written
        enc.add_frames(frames)
        c, f = self._video_file[key]
        return {
            f"videos/{key}/chunk_index": c,
            f"videos/{key}/file_index": f,
            f"videos/{key}/from_timestamp": start / self.fps,
            f"videos/{key}/to_timestamp": enc.frames_written / self.fps,
        }

    def _close_files(self) -> None:
        if self._pq is not None:
            self._pq.close()
            self._pq = None
        for enc in self._video.values():
            enc.close()
        self._video = {}

    def _write_meta(self) -> None:
        meta = self.tmp / "meta"
        meta.mkdir(exist_ok=True)
        for key in self.video_keys:  # probe the first file, as LeRobot does
            path = self.tmp / F.VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            self.features[key]["info"] = probe_video_info(path, self.codec)
        n = len(self._episodes)
        for row in self._episodes:
            row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        ep_path = self.tmp / F.EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(self._episodes)
        for name, typ in self.episode_columns.items():  # declared types win over inferred ones
            table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(typ))
        pq.write_table(table, ep_path)
        tasks = pd.DataFrame({"task_index": list(self._tasks.values())}, index=pd.Index(list(self._tasks), name="task"))
        tasks.to_parquet(self.tmp / F.TASKS_PATH)
        stats = {k: numeric_stats(np.concatenate(v)) for k, v in self._numeric.items()}
        stats.update({k: acc.result() for k, acc in self._images.items()})
        (self.tmp / F.STATS_PATH).write_text(json.dumps(to_jsonable(stats), indent=2))
        info = {
            "codebase_version": F.CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": n,
            "total_frames": self.total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": F.CHUNKS_SIZE,
            "data_files_size_in_mb": self.data_file_mb,
            "video_files_size_in_mb": self.video_file_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{n}"},
            "data_path": F.DATA_PATH,
            "video_path": F.VIDEO_PATH if self.video_keys else None,
            "features": self.features,
        }
        (self.tmp / F.INFO_PATH).write_text(json.dumps(info, indent=4))
        if self.provenance is not None:
            (self.tmp / F.VLAFORGE_META_PATH).write_text(json.dumps(self.provenance, indent=2, sort_keys=True))

    def _move_into_place(self) -> None:
        # rename() is atomic within one filesystem; an existing dataset is swapped out first and only
        # deleted once the new one stands at ``root``.
        old = None
        if self.root.exists():
            if not self.overwrite:
                raise FileExistsError(f"dataset folder {self.root} appeared while writing")
            old = self.root.parent / f"{self.root.name}.old-{uuid.uuid4().hex[:8]}"
            self.root.rename(old)
        try:
            self.tmp.rename(self.root)
        except BaseException:
            if old is not None:
                old.rename(self.root)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == F.CHUNKS_SIZE - 1 else (chunk, file + 1)
