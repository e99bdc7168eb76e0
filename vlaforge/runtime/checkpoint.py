"""Atomic DeepSpeed checkpoints with exact-resume state.

    <run>/checkpoints/
        latest                    "step-N" (DeepSpeed's own format: engine.load_checkpoint(dir) reads it too)
        step-N/                   DeepSpeed: model + optimizer + LR scheduler + step counters (per rank files)
            meta.json             model config, parameter shapes, world size (checked before loading)
            rank_state/rank-R.safetensors   RNG states (torch, numpy, python) + data position of rank R
            policy/               safetensors policy export (policies.io.save_pretrained) for eval/publication
        .tmp-step-M/              a save in progress (or one that crashed: ignored, removed by the next save)

Save protocol (every rank calls ``save``): all ranks write into ``.tmp-step-N`` (DeepSpeed's save is
collective), then after a barrier rank 0 renames it to ``step-N`` and replaces ``latest`` through a temp file
+ ``os.replace``. A crash anywhere before that leaves the previous checkpoint and ``latest`` untouched.
No pickle of ours: rank state is safetensors + JSON (DeepSpeed's own files use torch.save; we only load
checkpoints we wrote).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
LATEST = "latest"
META = "meta.json"
RANK_STATE = "rank_state"
POLICY = "policy"
TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    pass


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was written for another model (parameter names/shapes) or world size."""


def step_tag(step: int) -> str:
    return f"step-{int(step)}"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def _step_of(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """The committed checkpoint ``latest`` points to (a ``step-N`` dir), or None if there is none yet."""
    ckpts = checkpoints_dir(run_dir)
    try:
        tag = (ckpts / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    path = ckpts / tag
    if not tag.startswith("step-") or not (path / META).is_file():
        raise CheckpointError(f"{ckpts / LATEST} points to {tag!r}, which is not a complete checkpoint in {ckpts}")
    return path


def resolve(path: str | os.PathLike) -> Path:
    """A run dir (its latest), a ``checkpoints`` dir (its latest) or a ``step-N`` dir -> the step-N dir."""
    p = Path(path).expanduser()
    if (p / META).is_file():
        return p
    for run in (p, p.parent if p.name == CHECKPOINTS else None):
        if run is not None and (latest := find_latest(run)) is not None:
            return latest
    raise CheckpointError(f"{p}: no checkpoint here (expected <run>/checkpoints/latest or a step-N dir with {META})")


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


def write_rank_state(step_dir: Path, rank: int, state: dict[str, Any]) -> None:
    tensors, rng_meta = capture_rng()
    (step_dir / RANK_STATE).mkdir(parents=True, exist_ok=True)
    meta = {"rng": json.dumps(rng_meta), "state": json.dumps(state)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(step_dir / RANK_STATE / f"rank-{rank:05d}.safetensors"), metadata=meta)


def read_rank_state(step_dir: Path, rank: int, restore: bool = True) -> dict[str, Any]:
    """The rank's saved state dict (e.g. data position); restores its RNG states unless restore=False."""
    from safetensors import safe_open

    path = step_dir / RANK_STATE / f"rank-{rank:05d}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint has no state for rank {rank}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    if restore:
        restore_rng(load_file(str(path)), json.loads(meta["rng"]))
    return json.loads(meta["state"])


# -- compatibility -------------------------------------------------------------------------------------
def param_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {n: list(p.shape) for n, p in module.named_parameters()}


def check_compatible(step_dir: Path, meta: dict[str, Any]) -> None:
    """Raise CheckpointMismatchError naming what differs, before DeepSpeed fails with a shape traceback."""
    saved = json.loads((step_dir / META).read_text())
    old, new = saved.get("params", {}), meta.get("params", {})
    if old != new:
        diffs = [f"{n}: checkpoint {old.get(n, 'absent')} vs model {new.get(n, 'absent')}"
                 for n in sorted(set(old) | set(new)) if old.get(n) != new.get(n)]
        cfg_old, cfg_new = _flatten(saved.get("model_config", {})), _flatten(meta.get("model_config", {}))
        cfg_diff = [f"{k}: {cfg_old.get(k, 'absent')!r} -> {cfg_new.get(k, 'absent')!r}"
                    for k in sorted(set(cfg_old) | set(cfg_new)) if cfg_old.get(k) != cfg_new.get(k)]
        raise CheckpointMismatchError(
            f"{step_dir} was written for a different model: {len(diffs)} parameter(s) differ "
            f"({'; '.join(diffs[:5])}{' ...' if len(diffs) > 5 else ''}). "
            f"Config changes: {'; '.join(cfg_diff[:8]) or 'none recorded'}. Resume with the policy config it was trained with."
        )
    if saved.get("zero_stage", 0) > 0 and saved.get("world_size") != meta.get("world_size"):
        raise CheckpointMismatchError(
            f"{step_dir} holds ZeRO-{saved['zero_stage']} optimizer shards of {saved.get('world_size')} ranks; this run "
            f"has {meta.get('world_size')}. Resume with train.num_learners = {saved.get('world_size')}."
        )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# -- save / load ---------------------------------------------------------------------------------------
def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new content, never a mix


def save(
    engine: Any,
    run_dir: str | os.PathLike,
    step: int,
    *,
    rank: int,
    meta: dict[str, Any],
    rank_state: dict[str, Any],
    keep: int,
    export: Callable[[Path], None] | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the committed ``step-N`` dir."""
    ckpts, tag = checkpoints_dir(run_dir), step_tag(step)
    tmp, final = ckpts / f"{TMP_PREFIX}{tag}", ckpts / tag
    if rank == 0:
        ckpts.mkdir(parents=True, exist_ok=True)
        for stale in ckpts.glob(f"{TMP_PREFIX}*"):  # leftovers of crashed saves
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    engine.save_checkpoint(str(ckpts), tag=tmp.name, client_state={"vlaforge_step": int(step)}, save_latest=False)
    write_rank_state(tmp, rank, rank_state)
    if export is not None:
        export(tmp / POLICY)  # collective too (ZeRO-3 gathers); rank 0 writes
    if rank == 0:
        _fsync_write(tmp / META, json.dumps({**meta, "step": int(step)}, indent=2))
    _barrier()  # every rank's files are on disk
    if rank == 0:
        _commit(tmp, final, ckpts)
        _prune(ckpts, keep, keep_tag=tag)
    _barrier()  # nobody returns (and maybe loads) before `latest` moved
    return final


def _commit(tmp: Path, final: Path, ckpts: Path) -> None:
    if final.exists():  # the same step saved again: replace it
        old = ckpts / f"{TMP_PREFIX}old-{final.name}"
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_write(ckpts / LATEST, final.name)


def _prune(ckpts: Path, keep: int, keep_tag: str) -> None:
    steps = sorted((p for p in ckpts.glob("step-*") if p.is_dir() and _step_of(p) >= 0), key=_step_of)
    for p in steps[: max(0, len(steps) - keep)]:
        if p.name != keep_tag:
            shutil.rmtree(p, ignore_errors=True)


def load(engine: Any, path: str | os.PathLike, *, rank: int, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Collective. Restores model, optimizer, scheduler, step counters and this rank's RNG; returns
    (step, rank_state) with the data position the caller restores."""
    step_dir = resolve(path)
    check_compatible(step_dir, meta)
    load_path, client = engine.load_checkpoint(str(step_dir.parent), tag=step_dir.name)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {step_dir}")
    state = read_rank_state(step_dir, rank)
    return int(client.get("vlaforge_step", engine.global_steps)), state
