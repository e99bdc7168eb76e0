"""What each learner rank contributes to a checkpoint besides DeepSpeed's files: its RNG states and data
position (one safetensors file, no pickle) and a done marker listing the files the rank wrote.

    step-N/rank_state/rank-R.safetensors   RNG states (torch, numpy, python) + JSON state of rank R
    step-N/rank_state/rank-R.done          {"rank": R, "files": {"<relative path>": bytes, ...}}

The marker is written last by its rank, after every file it lists was fsynced: rank 0 commits a checkpoint
only when every rank's marker is there and every listed file has the recorded size (a rank whose files
went to another disk -- a run dir that is not shared between nodes -- is caught here, by name).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlaforge.errors import VlaforgeError
from vlaforge.manifest import fsync_path

RANK_STATE = "rank_state"


class CheckpointError(VlaforgeError, RuntimeError):
    """A checkpoint cannot be written, trusted or read; the message names the folder/file and the cause."""


def rank_state_file(step_dir: Path, rank: int) -> Path:
    return step_dir / RANK_STATE / f"rank-{rank:05d}.safetensors"


def done_marker(step_dir: Path, rank: int) -> Path:
    return step_dir / RANK_STATE / f"rank-{rank:05d}.done"


# -- RNG + data position: one safetensors file per rank (tensors + JSON metadata, no pickle) ----------
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()  # ('MT19937', uint32[624], pos, has_gauss, cached_gaussian)
    py_version, py_state, py_gauss = random.getstate()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_version, py_gauss]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss = meta["python"]
    random.setstate((version, tuple(int(x) for x in tensors["python_state"].tolist()), gauss))
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def write_rank_state(step_dir: Path, rank: int, state: dict[str, Any]) -> Path:
    tensors, rng_meta = capture_rng()
    (step_dir / RANK_STATE).mkdir(parents=True, exist_ok=True)
    meta = {"rng": json.dumps(rng_meta), "state": json.dumps(state)}
    path = rank_state_file(step_dir, rank)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def read_rank_state(step_dir: Path, rank: int, restore: bool = True) -> dict[str, Any]:
    """The rank's saved state dict (e.g. data position); restores its RNG states unless restore=False."""
    from safetensors import safe_open

    path = rank_state_file(step_dir, rank)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint has no state for rank {rank}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    if restore:
        restore_rng(load_file(str(path)), json.loads(meta["rng"]))
    return json.loads(meta["state"])


# -- the done marker -----------------------------------------------------------------------------------
def write_done_marker(step_dir: Path, rank: int, files: list[Path]) -> None:
    """fsync every file this rank wrote, then record them (relative path -> bytes) in its marker."""
    listed: dict[str, int] = {}
    for f in files:
        fsync_path(f)
        listed[f.relative_to(step_dir).as_posix()] = f.stat().st_size
    marker = done_marker(step_dir, rank)
    tmp = marker.with_name(marker.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({"rank": rank, "files": listed}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, marker)


def check_rank_parts(step_dir: Path, world_size: int) -> None:
    """Rank 0, after the barrier: every rank's marker and every file it lists. Raises naming the rank."""
    for r in range(world_size):
        marker = done_marker(step_dir, r)
        try:
            data = json.loads(marker.read_text())
            files = data["files"]
        except FileNotFoundError:
            raise MissingRankPart(r, f"{marker} not found: rank {r} did not finish writing its part of {step_dir} "
                                     "(if the learners run on several nodes, the run dir must be on a filesystem "
                                     "they all share)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise MissingRankPart(r, f"{marker}: unreadable done marker of rank {r} ({e})") from None
        for rel, size in files.items():
            p = step_dir / rel
            if not p.is_file():
                raise MissingRankPart(r, f"{p}: rank {r} wrote it but rank 0 cannot see it (is the run dir "
                                         "shared by every learner node?)")
            if p.stat().st_size != size:
                raise MissingRankPart(r, f"{p}: {p.stat().st_size} bytes, rank {r} wrote {size}")


class MissingRankPart(CheckpointError):
    def __init__(self, rank: int, message: str):
        self.rank, self.detail = rank, message
        super().__init__(f"refusing to commit the checkpoint: {message}")

    def __reduce__(self):  # picklable with its fields (it crosses Ray's process boundary)
        return type(self), (self.rank, self.detail)
