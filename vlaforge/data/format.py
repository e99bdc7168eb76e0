"""Constants and feature helpers of the LeRobot v3.0 dataset layout (see STACK.md).

```
<root>/meta/info.json                                     codebase_version "v3.0", features, fps, paths
<root>/meta/stats.json                                    per feature: min max mean std count q01..q99
<root>/meta/tasks.parquet                                 index "task" (the instruction) -> task_index
<root>/meta/episodes/chunk-000/file-000.parquet           one row per episode (+ our extra columns)
<root>/data/chunk-XXX/file-XXX.parquet                    one row per frame, many episodes per file
<root>/videos/<video_key>/chunk-XXX/file-XXX.mp4          episodes back to back in one mp4
```
LeRobot's own names and paths are kept verbatim so that its loader opens what we write and we open what
it writes. ``lerobot`` itself cannot be a dependency (it pins an older torch), so nothing is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILE_MB = 100  # LeRobot's defaults for rolling over to the next file
VIDEO_FILE_MB = 200
# Our own provenance file (configs that produced the data). LeRobot ignores unknown files under meta/.
VLAFORGE_META_PATH = "meta/vlaforge.json"

# Per-frame bookkeeping columns every v3 dataset carries (LeRobot's DEFAULT_FEATURES).
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}

# Feature names of our demonstrations (LeRobot's naming: dots, "next." for step results).
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
PRIVILEGED_KEY = "observation.privileged"
ACTION_KEY = "action"
REWARD_KEY = "next.reward"
SUCCESS_KEY = "next.success"
DONE_KEY = "next.done"
# Action-free rollouts (demos.drop_actions): the executed action, kept for the codes -> actions linear probe of
# issue 7 only. Not "action": no learner's loader (ChunkDataset reads "action") can train on it by accident.
PROBE_ACTION_KEY = "probe.action"

_ARROW_TYPES: dict[str, pa.DataType] = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "int16": pa.int16(),
    "int8": pa.int8(),
    "uint8": pa.uint8(),
    "bool": pa.bool_(),
    "string": pa.string(),
}


def video_feature(height: int, width: int) -> dict[str, Any]:
    """A video feature as LeRobot declares it; ``info`` (codec, pix_fmt, fps...) is filled at finalize."""
    return {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"]}


def vector_feature(dtype: str, dim: int, names: list[str] | None = None) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [dim], "names": names}


def scalar_feature(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


def is_visual(feature: dict[str, Any]) -> bool:
    return feature.get("dtype") in ("video", "image")


def arrow_type(key: str, feature: dict[str, Any]) -> pa.DataType:
    """Arrow type of a non-visual feature, matching what HF ``datasets`` writes for LeRobot:
    shape (1,) -> a scalar column (``datasets.Value``), shape (n,) -> ``fixed_size_list<n>``
    (``datasets.Sequence(length=n)``)."""
    dtype = feature.get("dtype")
    if dtype not in _ARROW_TYPES:
        raise ValueError(f"feature {key!r}: dtype {dtype!r} is not supported (expected one of {sorted(_ARROW_TYPES)})")
    shape = tuple(feature.get("shape") or ())
    if shape == (1,) or (dtype == "string" and len(shape) <= 1):
        return _ARROW_TYPES[dtype]
    if len(shape) == 1:
        return pa.list_(_ARROW_TYPES[dtype], shape[0])
    raise ValueError(f"feature {key!r}: shape {list(shape)} not supported for parquet columns (1-D only)")


def numpy_column(key: str, feature: dict[str, Any], column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A parquet column -> numpy: (N,) for scalars, (N, n) for vectors. Tolerates ``list`` as well as
    ``fixed_size_list`` columns and length-1 lists for scalar features (datasets written elsewhere)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    dtype = feature.get("dtype")
    if dtype == "string":
        return np.asarray(column.to_pylist(), dtype=object)
    n = len(column)
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(
        column.type
    ):
        flat = column.flatten().to_numpy(zero_copy_only=False)
        if n and flat.size % n:
            raise ValueError(f"column {key!r}: rows of unequal length (expected shape {feature.get('shape')})")
        arr = flat.reshape(n, -1) if n else flat.reshape(0, int(np.prod(feature.get("shape") or [1])))
        if tuple(feature.get("shape") or ()) == (1,):
            arr = arr.reshape(n)
    else:
        arr = column.to_numpy(zero_copy_only=False)
    return arr.astype(np.dtype(dtype), copy=False) if dtype in _ARROW_TYPES else arr
