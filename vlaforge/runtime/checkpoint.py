"""Crash-safe DeepSpeed checkpoints with exact-resume state, verified before anything is unpickled.

    <run>/checkpoints/
        latest                    "step-N": the newest committed checkpoint (a plain name inside checkpoints/)
        step-N/                   DeepSpeed: model + optimizer + LR scheduler + step counters (per rank files)
            meta.json             model config, parameter shapes, world size (checked before loading)
            rank_state/           per rank: RNG + data position (safetensors) and a done marker (rank_state.py)
            policy/               safetensors policy export with its own MANIFEST.json (eval / publication)
            MANIFEST.json         sha256 + size of every file above (vlaforge.manifest), written last
        step-N.r1/                the same step saved again (committed beside step-N, which is then deleted)
        .tmp-step-M/              a save in progress (or one that crashed: never read, removed by the next save)

Save protocol (every rank calls ``save``; a crash or a kill at any point leaves ``latest`` naming a complete,
verifiable checkpoint):
  1. all ranks write into ``.tmp-step-N`` (DeepSpeed's save is collective); each rank fsyncs its files and
     writes its done marker;
  2. barrier; rank 0 refuses to commit unless every rank's marker and listed files are there (the error names
     the rank), fsyncs every file and folder, and writes MANIFEST.json as the last file;
  3. rank 0 renames the folder to a NEW name (``step-N``, or ``step-N.rK`` if that step exists) and fsyncs
     ``checkpoints/``; then replaces ``latest`` (temp file + fsync + ``os.replace`` + fsync of the folder);
  4. only then deletes what the new checkpoint supersedes: older saves of the same step, checkpoints of an
     abandoned later timeline, and the oldest beyond ``keep`` (keep >= 2 leaves a fallback, below);
  5. rank 0 broadcasts the outcome, so every rank returns or raises together.

Resume (``find_latest``/``load``): the checkpoint ``latest`` names is verified against its manifest (sizes,
then sha256, and no unlisted file). If it fails -- truncated, corrupt, missing manifest -- a WARNING names the
file and the newest OLDER checkpoint that verifies is used; none verifying is an error naming each failure.
DeepSpeed's own files are pickles (``torch.load``): ``load`` verifies the manifest in the loading process
first, so only bytes whose hashes this run recorded at commit time are ever unpickled. Our own state is
safetensors + JSON. Paths read from disk are confined: ``latest`` must hold a plain ``step-N`` name of a real
(non-symlink) folder inside ``checkpoints/``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from vlaforge.manifest import MANIFEST, ManifestError, fsync_path, verify_manifest, write_manifest
from vlaforge.runtime.rank_state import (  # noqa: F401  (re-exported: the learners' and tests' names)
    RANK_STATE,
    CheckpointError,
    MissingRankPart,
    capture_rng,
    check_rank_parts,
    read_rank_state,
    restore_rng,
    write_done_marker,
    write_rank_state,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
META = "meta.json"
POLICY = "policy"
TMP_PREFIX = ".tmp-"
# A committed folder: step-<N>, or step-<N>.r<K> for the K-th re-save of step N.
_NAME = re.compile(r"step-(\d+)(?:\.r(\d+))?")


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was written for another model (parameter names/shapes) or world size."""


def step_tag(step: int) -> str:
    return f"step-{int(step)}"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def _order(name: str) -> tuple[int, int] | None:
    """(step, revision) of a committed folder name; None for anything else."""
    m = _NAME.fullmatch(name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def committed(ckpts: Path) -> list[Path]:
    """Checkpoint folders in ``ckpts``, oldest first (symlinks are never followed)."""
    if not ckpts.is_dir():
        return []
    found = [p for p in ckpts.iterdir() if _order(p.name) is not None and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: _order(p.name))


# -- `latest`: a pointer read from disk, so confined -----------------------------------------------------
def read_latest(ckpts: Path) -> str | None:
    """The folder name ``latest`` holds (None if there is no ``latest``). Anything but a plain ``step-N``
    name of a real folder inside ``ckpts`` is refused: the file is untrusted input."""
    f = ckpts / LATEST
    if f.is_symlink():
        raise CheckpointError(f"{f} is a symlink; refusing to follow it (write the name of a step folder into a "
                              f"plain file, e.g. step-100)")
    try:
        with open(f, "rb") as fh:
            raw = fh.read(256)
    except FileNotFoundError:
        return None
    tag = raw.decode("utf-8", "replace").strip()
    if _order(tag) is None:
        raise CheckpointError(f"{f} holds {tag[:80]!r}, not the name of a checkpoint folder (step-N) inside {ckpts}; "
                              "refusing to follow it. Write the name of a step folder into it, e.g. step-100")
    target = ckpts / tag
    if target.is_symlink() or (target.exists() and not target.resolve().is_relative_to(ckpts.resolve())):
        raise CheckpointError(f"{f} names {tag}, which is a symlink leading outside {ckpts}; refusing to follow it")
    return tag


def _write_latest(ckpts: Path, name: str) -> None:
    tmp = ckpts / f"{TMP_PREFIX}{LATEST}-{os.getpid()}"  # a crash leaves it to the next save's cleanup
    with open(tmp, "w") as f:
        f.write(name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpts / LATEST)  # atomic on POSIX: readers see the old or the new name, never a mix
    fsync_path(ckpts)  # ... and the rename itself survives a power loss


# -- verification ----------------------------------------------------------------------------------------
def verify(step_dir: Path) -> None:
    """Raise CheckpointError naming the first file that does not match the manifest, or an unlisted file at
    the top of the folder: DeepSpeed globs its pickles there (``mp_rank_*_model_states.pt``), so a file the
    run did not write must never sit beside them. Unlisted files deeper down are tolerated (the driver adds
    ``policy/run_card.json`` to the final checkpoint's export after the commit; nothing unpickles there)."""
    try:
        listed = verify_manifest(step_dir)["files"]
    except ManifestError as e:
        raise CheckpointError(f"checkpoint {step_dir} failed verification: {e}") from None
    extra = sorted(p.name for p in step_dir.iterdir() if not p.is_dir() and p.name not in listed and p.name != MANIFEST)
    if extra:
        raise CheckpointError(f"checkpoint {step_dir} failed verification: {', '.join(extra[:5])} not in its "
                              f"{MANIFEST} (a file this run did not write, beside the files DeepSpeed unpickles)")
    try:
        json.loads((step_dir / META).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {step_dir}: {step_dir / META} unreadable ({e})") from None


def find_latest(run_dir: str | os.PathLike, *, fallback: bool = True) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names if it verifies; otherwise (``fallback``) the
    newest older one that verifies, with a WARNING naming what failed. None if the run has no checkpoint."""
    ckpts = checkpoints_dir(run_dir)
    tag = read_latest(ckpts)
    folders = committed(ckpts)
    if tag is None:
        if not folders:
            return None
        log.warning("%s is missing; looking for the newest checkpoint in %s that verifies", ckpts / LATEST, ckpts)
        candidates = folders[::-1]
    else:
        older = [p for p in folders if _order(p.name) < _order(tag)]
        candidates = [ckpts / tag, *older[::-1]] if fallback else [ckpts / tag]
    failures = []
    for path in candidates:
        try:
            if not path.is_dir():
                raise CheckpointError(f"{path} (named by {ckpts / LATEST}) does not exist")
            verify(path)
        except CheckpointError as e:
            failures.append(str(e))
            if fallback:
                log.warning("%s", e)
            continue
        if failures:
            log.warning("falling back to %s, the newest previous checkpoint that verifies", path)
        return path
    raise CheckpointError(f"no usable checkpoint in {ckpts}: " + "; ".join(failures) +
                          (" (no older checkpoint to fall back to)" if len(failures) == 1 else ""))


def resolve(path: str | os.PathLike) -> Path:
    """A run dir (its latest), a ``checkpoints`` dir (its latest) or a ``step-N`` dir -> the step-N dir."""
    p = Path(path).expanduser()
    if (p / META).is_file():
        return p
    for run in (p, p.parent if p.name == CHECKPOINTS else None):
        if run is not None and (latest := find_latest(run)) is not None:
            return latest
    raise CheckpointError(f"{p}: no checkpoint here (expected <run>/checkpoints/latest or a step-N dir with {META})")


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


# -- save ----------------------------------------------------------------------------------------------
def _engine_files(engine: Any, ckpts: Path, tag: str) -> list[Path]:
    """The files DeepSpeed wrote on this rank (its own naming helpers; see DeepSpeedEngine.save_checkpoint):
    the model states on the data-parallel writer, the ZeRO optimizer partition on every ZeRO rank."""
    files = []
    if getattr(engine, "save_non_zero_checkpoint", False):
        files.append(Path(engine._get_ckpt_name(str(ckpts), tag)))
    if getattr(engine, "save_zero_checkpoint", False):
        files.append(Path(engine._get_zero_ckpt_name(str(ckpts), tag)))
    return [f for f in files if f.is_file()]


def _fsync_tree(folder: Path) -> None:
    """fsync every file, then every folder bottom-up (new directory entries are durable only then)."""
    dirs = [folder]
    for root, subdirs, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        dirs.extend(Path(root) / d for d in subdirs)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_path(d)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _share_outcome(status: int) -> int:
    """Rank 0's commit outcome to every rank (-1: committed, r >= 0: rank r's part missing, -2: other)."""
    if not (dist.is_available() and dist.is_initialized()):
        return status
    # NCCL only moves GPU tensors; gloo (CPU clusters) moves CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([status], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


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
    world_size: int | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the committed folder (``step-N``, or ``step-N.rK`` when step N
    was saved before). Raises CheckpointError on every rank if the commit was refused."""
    world = _world_size() if world_size is None else int(world_size)
    ckpts, tag = checkpoints_dir(run_dir), step_tag(step)
    tmp = ckpts / f"{TMP_PREFIX}{tag}"
    if rank == 0:
        ckpts.mkdir(parents=True, exist_ok=True)
        for stale in ckpts.glob(f"{TMP_PREFIX}*"):  # leftovers of crashed saves: never committed, never read
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    _barrier()
    engine.save_checkpoint(str(ckpts), tag=tmp.name, client_state={"vlaforge_step": int(step)}, save_latest=False)
    mine = [*_engine_files(engine, ckpts, tmp.name), write_rank_state(tmp, rank, rank_state)]
    if export is not None:
        export(tmp / POLICY)  # collective too (ZeRO-3 gathers); rank 0 writes (and its manifest)
    if rank == 0:
        (tmp / META).write_text(json.dumps({**meta, "step": int(step), "world_size": world}, indent=2))
        mine.append(tmp / META)
    write_done_marker(tmp, rank, mine)  # fsyncs `mine` first
    _barrier()  # every rank's files are on disk (or a rank failed: its marker is missing)
    status, error = -1, None
    if rank == 0:
        try:
            final = _commit(tmp, ckpts, step, world)
            _prune(ckpts, keep, final)
        except MissingRankPart as e:
            status, error = e.rank, e
        except BaseException as e:  # noqa: BLE001 -- re-raised below, after the other ranks were told
            status, error = -2, e
    status = _share_outcome(status)
    if error is not None:
        raise error
    if status != -1:
        who = f"rank {status}'s part is missing" if status >= 0 else "see rank 0's error"
        raise CheckpointError(f"rank 0 refused to commit {tmp} ({who}); the previous checkpoint stays current")
    return ckpts / read_latest(ckpts)


def _free_name(ckpts: Path, step: int) -> str:
    """``step-N``, or ``step-N.rK`` with K above every existing revision (a NEW name: nothing is replaced)."""
    revs = [_order(p.name)[1] for p in ckpts.iterdir() if _order(p.name) and _order(p.name)[0] == step]
    return step_tag(step) if not revs else f"{step_tag(step)}.r{max(revs) + 1}"


def _commit(tmp: Path, ckpts: Path, step: int, world_size: int) -> Path:
    check_rank_parts(tmp, world_size)
    _fsync_tree(tmp)
    write_manifest(tmp)  # the last file: its presence means every file above it is complete
    final = ckpts / _free_name(ckpts, step)
    os.rename(tmp, final)  # atomic; `final` did not exist
    fsync_path(ckpts)
    _write_latest(ckpts, final.name)
    return final


def _prune(ckpts: Path, keep: int, current: Path) -> None:
    """After ``latest`` names ``current``: drop older saves of its step, folders of a later step (a timeline
    abandoned by resuming from an older checkpoint), and the oldest beyond ``keep``."""
    step, rev = _order(current.name)
    kept = []
    for p in committed(ckpts):
        s, r = _order(p.name)
        if p == current:
            continue
        if s == step or s > step:
            shutil.rmtree(p, ignore_errors=True)
        else:
            kept.append(p)
    for p in kept[: max(0, len(kept) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)


# -- load ----------------------------------------------------------------------------------------------
def load(engine: Any, path: str | os.PathLike, *, rank: int, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Collective. Verifies the checkpoint's manifest HERE (the process that unpickles DeepSpeed's files),
    then restores model, optimizer, scheduler, step counters and this rank's RNG; returns (step, rank_state)
    with the data position the caller restores."""
    step_dir = resolve(path)
    verify(step_dir)
    check_compatible(step_dir, meta)
    load_path, client = engine.load_checkpoint(str(step_dir.parent), tag=step_dir.name)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {step_dir}")
    state = read_rank_state(step_dir, rank)
    return int(client.get("vlaforge_step", engine.global_steps)), state
